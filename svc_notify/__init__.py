"""svc_notify: tells people what happened, in-app, by e-mail, SMS and webhook."""
