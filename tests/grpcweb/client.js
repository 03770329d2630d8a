// grpc-web client of the HIN ingress, run by test_grpcweb.py under Node.
//
// node client.js ACTION BASE_URL TOKEN [ARGS...] prints one JSON object per
// line: a reply ({"message", "instance"}), a stream message ({"sequence",
// "message", "at_ms"}) or an error ({"error": {"code", "name", "message"}}).
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";

import { EchoService } from "./gen/hin/echo/v1/echo_service_pb.js";

const [action, baseUrl, token, ...rest] = process.argv.slice(2);

// HTTP/1.1 is what a browser's fetch uses for grpc-web through most proxies.
const transport = createGrpcWebTransport({ baseUrl, httpVersion: "1.1" });
const client = createClient(EchoService, transport);
const headers = token ? { authorization: `Bearer ${token}` } : {};
const started = Date.now();

function print(value) {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

async function main() {
  switch (action) {
    case "unary": {
      const reply = await client.echo({ message: rest[0] ?? "" }, { headers });
      print({ message: reply.message, instance: reply.instanceId, caller: reply.caller });
      break;
    }
    case "fail": {
      await client.echo({ message: "x", failWithCode: Number(rest[0]) }, { headers });
      print({ message: "unexpected success" });
      break;
    }
    case "stream": {
      const request = {
        message: rest[0] ?? "",
        count: Number(rest[1] ?? 1),
        intervalMs: Number(rest[2] ?? 0),
      };
      for await (const reply of client.echoStream(request, { headers })) {
        print({ sequence: reply.sequence, message: reply.message, at_ms: Date.now() - started });
      }
      break;
    }
    default:
      throw new Error(`unknown action ${action}; use unary, fail or stream`);
  }
}

main().catch((error) => {
  if (error instanceof ConnectError) {
    print({ error: { code: error.code, name: Code[error.code], message: error.rawMessage } });
    process.exitCode = 0;
  } else {
    process.stderr.write(`${error?.stack ?? error}\n`);
    process.exitCode = 1;
  }
});
