"""Errors of the notification context."""

from __future__ import annotations

from mesh.runtime.errors import Aborted, HinError, InvalidArgument


class NotifyError(HinError):
    """Base of every error svc_notify raises on purpose."""


class StaleVersion(NotifyError, Aborted):
    """An update was based on a version that is no longer current."""


class InvalidEvent(NotifyError, InvalidArgument):
    """A consumed event lacks a field the notification needs.

    The consumer retries and then dead-letters the record; the next record of
    the partition is processed.
    """
