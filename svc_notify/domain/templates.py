"""English and Arabic texts of every notification kind.

A template has a title, a body and a summary. The summary carries no clinical
detail and no amounts; SMS and e-mail subjects use it, because those channels
leave the network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from hin.notify.v1 import notify_service_pb2 as pb

Kind = pb.NotificationKind

#: Attributes that hold an ISO 8601 instant; they are shown in the recipient's
#: time zone.
TIME_ATTRIBUTES = frozenset({"start", "previous_start", "expires_at", "due_at"})


@dataclass(frozen=True)
class Template:
    """Texts of one kind in one language, with ``{attribute}`` placeholders."""

    title: str
    summary: str
    body: str


@dataclass(frozen=True)
class RenderedText:
    """Texts of one notification, ready for a channel."""

    language: str
    title: str
    summary: str
    body: str


TEMPLATES: dict[int, dict[str, Template]] = {
    Kind.NOTIFICATION_KIND_TEST_RESULT: {
        "en": Template(
            "New test result",
            "A new test result is available.",
            "{test}: {value} ({interpretation}, {status}). Result {result_id}.",
        ),
        "ar": Template(
            "نتيجة تحليل جديدة",
            "توجد نتيجة تحليل جديدة.",
            "{test}: {value} ({interpretation}، {status}). رقم النتيجة {result_id}.",
        ),
    },
    Kind.NOTIFICATION_KIND_TEST_RESULT_CORRECTED: {
        "en": Template(
            "Test result corrected",
            "A test result was corrected.",
            "{test} was corrected to {value} ({interpretation}). "
            "Result {result_id}, version {version}.",
        ),
        "ar": Template(
            "تصحيح نتيجة تحليل",
            "تم تصحيح نتيجة تحليل.",
            "تم تصحيح {test} إلى {value} ({interpretation}). "
            "رقم النتيجة {result_id}، الإصدار {version}.",
        ),
    },
    Kind.NOTIFICATION_KIND_CRITICAL_RESULT: {
        "en": Template(
            "URGENT: critical test result",
            "A critical test result needs your acknowledgment.",
            "Critical {test}: {value} ({interpretation}) for patient {patient_id}. "
            "Acknowledge result {result_id} now.",
        ),
        "ar": Template(
            "عاجل: نتيجة تحليل حرجة",
            "نتيجة تحليل حرجة تحتاج إلى تأكيد استلامك.",
            "قيمة حرجة في {test}: {value} ({interpretation}) للمريض {patient_id}. "
            "يرجى تأكيد استلام النتيجة {result_id} الآن.",
        ),
    },
    Kind.NOTIFICATION_KIND_CRITICAL_RESULT_ESCALATED: {
        "en": Template(
            "URGENT: unacknowledged critical result",
            "A critical test result was not acknowledged and is escalated to you.",
            "Critical {test}: {value} ({interpretation}) for patient {patient_id} "
            "was not acknowledged by practitioner {ordering_practitioner_id}. "
            "Escalation level {level}. Acknowledge result {result_id} now.",
        ),
        "ar": Template(
            "عاجل: نتيجة حرجة لم يتم تأكيد استلامها",
            "نتيجة تحليل حرجة لم يتم تأكيد استلامها وتم تصعيدها إليك.",
            "قيمة حرجة في {test}: {value} ({interpretation}) للمريض {patient_id} "
            "لم يؤكد الطبيب {ordering_practitioner_id} استلامها. "
            "مستوى التصعيد {level}. يرجى تأكيد استلام النتيجة {result_id} الآن.",
        ),
    },
    Kind.NOTIFICATION_KIND_APPOINTMENT_BOOKED: {
        "en": Template(
            "Appointment booked",
            "Your appointment is booked.",
            "Your appointment {appointment_id} is on {start}.",
        ),
        "ar": Template(
            "تم حجز موعد",
            "تم حجز موعدك.",
            "موعدك رقم {appointment_id} في {start}.",
        ),
    },
    Kind.NOTIFICATION_KIND_APPOINTMENT_RESCHEDULED: {
        "en": Template(
            "Appointment moved",
            "Your appointment was moved.",
            "Your appointment {appointment_id} moved from {previous_start} to {start}.",
        ),
        "ar": Template(
            "تم تغيير موعد",
            "تم تغيير موعدك.",
            "تم نقل موعدك رقم {appointment_id} من {previous_start} إلى {start}.",
        ),
    },
    Kind.NOTIFICATION_KIND_APPOINTMENT_CANCELLED: {
        "en": Template(
            "Appointment cancelled",
            "Your appointment was cancelled.",
            "Your appointment {appointment_id} on {start} was cancelled "
            "(cancelled by: {cancelled_by}).",
        ),
        "ar": Template(
            "تم إلغاء موعد",
            "تم إلغاء موعدك.",
            "تم إلغاء موعدك رقم {appointment_id} في {start} "
            "(الجهة التي ألغت الموعد: {cancelled_by}).",
        ),
    },
    Kind.NOTIFICATION_KIND_PRACTITIONER_UNAVAILABLE: {
        "en": Template(
            "Your practitioner is unavailable",
            "Your practitioner's availability changed.",
            "Practitioner {practitioner_id} is unavailable. Your appointment "
            "{appointment_id} is affected; you will receive its new status "
            "separately.",
        ),
        "ar": Template(
            "الطبيب غير متاح",
            "تغيرت مواعيد الطبيب المعالج.",
            "الطبيب {practitioner_id} غير متاح. موعدك رقم {appointment_id} "
            "تأثر بذلك وستصلك حالته الجديدة في رسالة منفصلة.",
        ),
    },
    Kind.NOTIFICATION_KIND_CHARGE_POSTED: {
        "en": Template(
            "New charge",
            "A charge was posted to your account.",
            "Charge {charge_id} for {service}: {amount}.",
        ),
        "ar": Template(
            "رسوم جديدة",
            "تمت إضافة رسوم إلى حسابك.",
            "الرسوم رقم {charge_id} مقابل {service}: {amount}.",
        ),
    },
    Kind.NOTIFICATION_KIND_INVOICE_ISSUED: {
        "en": Template(
            "New invoice",
            "A new invoice was issued to you.",
            "Invoice {invoice_id}: total {total}, your share "
            "{patient_responsibility}, due {due_at}.",
        ),
        "ar": Template(
            "فاتورة جديدة",
            "تم إصدار فاتورة جديدة لك.",
            "الفاتورة رقم {invoice_id}: الإجمالي {total}، المستحق عليك "
            "{patient_responsibility}، تاريخ الاستحقاق {due_at}.",
        ),
    },
    Kind.NOTIFICATION_KIND_CLAIM_ADJUDICATED: {
        "en": Template(
            "Insurance claim decided",
            "Your insurer decided on a claim.",
            "Claim {claim_id}: {outcome}. Approved {approved}, your share "
            "{patient_responsibility}.",
        ),
        "ar": Template(
            "قرار بشأن مطالبة التأمين",
            "أصدرت شركة التأمين قرارًا بشأن مطالبة.",
            "المطالبة رقم {claim_id}: {outcome}. المبلغ المعتمد {approved}، "
            "المستحق عليك {patient_responsibility}.",
        ),
    },
    Kind.NOTIFICATION_KIND_BREAK_GLASS: {
        "en": Template(
            "Break-the-glass access",
            "Emergency access to a patient record was granted.",
            "{subject} used emergency access to patient {patient_id} until "
            "{expires_at}. Stated reason: {reason}. Grant {grant_id}.",
        ),
        "ar": Template(
            "وصول طارئ (كسر الزجاج)",
            "تم منح وصول طارئ إلى سجل مريض.",
            "استخدم {subject} الوصول الطارئ إلى سجل المريض {patient_id} حتى "
            "{expires_at}. السبب المذكور: {reason}. رقم المنحة {grant_id}.",
        ),
    },
    Kind.NOTIFICATION_KIND_PATIENT_ADMITTED: {
        "en": Template(
            "Patient admitted",
            "A patient was admitted.",
            "Patient {patient_id} was admitted to ward {ward} "
            "(emergency: {emergency}). Admission {admission_id}.",
        ),
        "ar": Template(
            "دخول مريض",
            "تم إدخال مريض إلى المستشفى.",
            "تم إدخال المريض {patient_id} إلى قسم {ward} "
            "(طارئ: {emergency}). رقم الدخول {admission_id}.",
        ),
    },
}

#: Words that attribute values take, translated for Arabic texts.
_ARABIC_WORDS = {
    "yes": "نعم",
    "no": "لا",
    "normal": "طبيعي",
    "high": "مرتفع",
    "low": "منخفض",
    "critical high": "مرتفع بشكل حرج",
    "critical low": "منخفض بشكل حرج",
    "abnormal": "غير طبيعي",
    "preliminary": "أولية",
    "final": "نهائية",
    "corrected": "مصححة",
    "approved": "مقبولة",
    "partially approved": "مقبولة جزئيًا",
    "denied": "مرفوضة",
    "patient": "المريض",
    "practitioner": "الطبيب",
    "hospital": "المستشفى",
    "availability-change": "تغير مواعيد الطبيب",
    "unknown": "غير معروف",
}


def render(
    kind: int,
    language: str,
    attributes: Mapping[str, str],
    zone: ZoneInfo,
) -> RenderedText:
    """Fill the template of ``kind`` in ``language``.

    A placeholder whose attribute is missing is shown as "-", so a sparse event
    still yields a readable message.

    Raises:
        KeyError: when ``kind`` has no template.
    """
    template = TEMPLATES[kind][language]
    values = _Values(
        {
            key: _localize(key, value, language, zone)
            for key, value in attributes.items()
        }
    )
    return RenderedText(
        language=language,
        title=template.title.format_map(values),
        summary=template.summary.format_map(values),
        body=template.body.format_map(values),
    )


class _Values(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "-"


def _localize(key: str, value: str, language: str, zone: ZoneInfo) -> str:
    if key in TIME_ATTRIBUTES and value:
        try:
            instant = datetime.fromisoformat(value)
        except ValueError:
            return value
        local = instant.astimezone(zone)
        return f"{local:%Y-%m-%d %H:%M} {zone.key}"
    if language == "ar":
        return _ARABIC_WORDS.get(value, value)
    return value


#: Closing line of e-mails and text messages, which carry no clinical detail.
FOOTERS = {
    "en": "Open HIN to read the details. Reference: {notification_id}.",
    "ar": "افتح تطبيق HIN لقراءة التفاصيل. المرجع: {notification_id}.",
}


def footer(language: str, notification_id: str) -> str:
    """Return the closing line of an external message."""
    return FOOTERS[language].format(notification_id=notification_id)
