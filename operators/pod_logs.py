"""Pod log lines in the task log at their own level, once, without the pod's timestamp.

Every step logs ``%(asctime)s %(levelname)s [%(name)s] [rank N] %(message)s``
(:mod:`vlmprobe.log`). :class:`PodLogRelay` parses the level out of each line and re-logs the
rest at that level; a line without a level (a traceback, torchrun's output, a plain print)
keeps the level of the line before it. It also remembers the pod's last ERROR line, which
the task's failure message names.

The relay is hooked into the three places the cncf-kubernetes provider (10.25) logs container
lines: :class:`RelayingPodManager` (a pod followed by the worker), the triggerer's
:class:`RelayingAsyncPodManager` (a deferred pod, every ``logging_interval`` seconds; used by
:class:`VlmprobePodTrigger`), and the operator's ``_write_logs`` on resuming from the trigger.
Local pod mode feeds its subprocess's output to the same relay.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from functools import cached_property

from airflow.providers.cncf.kubernetes.triggers.pod import KubernetesPodTrigger
from airflow.providers.cncf.kubernetes.utils.pod_manager import (
    AsyncPodManager,
    OnKillAction,
    PodManager,
    parse_log_line,
)

LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
    "FATAL": logging.CRITICAL,
}
# vlmprobe.log's format: "2026-11-25 02:00:00,123 ERROR [vlmprobe.probe] [rank 0] message".
_STEP_LINE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[,.]\d+)?\s+"
    r"(?P<level>DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\s+(?P<message>.*)$")
# torch.distributed.elastic (glog style): "E1125 02:00:00.123000 4242 torch/.../api.py:882] failed".
_GLOG_LINE = re.compile(r"^(?P<level>[IWEF])\d{4} \d{2}:\d{2}:\d{2}\.\d+\s+\d+\s+(?P<message>\S+\].*)$")
_GLOG_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
# The CLI's one-line failure: "vlmprobe probe: error: input folder ... does not exist".
_CLI_ERROR = re.compile(r"^vlmprobe [\w-]+: error: ")
# torchrun's --tee/--local-ranks-filter prefix: "[rank0]: ..." or "[default0]:...".
_RANK_PREFIX = re.compile(r"^\[(?:default|rank)\d+\]:\s?")
# The last line of a Python traceback: "ValueError: bad input".
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Failure|Warning)\b:?.*$")


class PodLogRelay:
    """Re-log pod output lines at their own level; remember the last ERROR line.

    :param emit: called as ``emit(level, message)`` for each non-blank line; None only records.
    """

    def __init__(self, emit: Callable[[int, str], None] | None = None) -> None:
        self.emit = emit
        self.level = logging.INFO
        self._step_error: str | None = None  # last ERROR line in the steps' own format
        self._other_error: str | None = None  # last ERROR line of anything else (torchrun, ...)
        self._error_detail: str | None = None  # last "SomeError: ..." line continuing an ERROR

    def feed(self, line: str) -> None:
        line = line.rstrip("\r\n")
        # Blank lines, and the `null` the CLI prints as the result of a rank without one.
        if not line.strip() or line.strip() == "null":
            return
        line = _RANK_PREFIX.sub("", line, count=1)
        if match := _STEP_LINE.match(line):
            self.level, message = LEVELS[match["level"]], match["message"]
            if self.level >= logging.ERROR:
                self._step_error, self._error_detail = message, None
        elif match := _GLOG_LINE.match(line):
            self.level, message = _GLOG_LEVELS[match["level"]], match["message"]
            if self.level >= logging.ERROR:
                self._other_error = message
        elif _CLI_ERROR.match(line):
            self.level, message = logging.ERROR, line
            self._step_error, self._error_detail = message, None
        else:  # a continuation: keeps the level of the line before it
            message = line
            if self.level >= logging.ERROR and _EXCEPTION_LINE.match(line.strip()):
                self._error_detail = line.strip()
        if self.emit is not None:
            self.emit(self.level, message)

    def feed_all(self, lines: Iterable[str]) -> PodLogRelay:
        for line in lines:
            self.feed(line)
        return self

    @property
    def last_error(self) -> str | None:
        """The pod's last ERROR line (the steps' own first), with the exception it ended in."""
        headline = self._step_error or self._other_error
        detail = self._error_detail if self._step_error else None
        if headline and detail and detail not in headline:
            return f"{headline} ({detail})"
        return headline or self._error_detail


def logger_emit(logger: logging.Logger) -> Callable[[int, str], None]:
    return lambda level, message: logger.log(level, "%s", message)


class RelayingPodManager(PodManager):
    """The provider's PodManager, logging container lines through a :class:`PodLogRelay`."""

    def __init__(self, *args, relay: PodLogRelay | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.relay = relay or PodLogRelay(logger_emit(self.log))

    def _log_message(self, message, container_name, container_name_log_prefix_enabled, log_formatter) -> None:
        for line in message.split("\n"):
            self.relay.feed(line)


class RelayingAsyncPodManager(AsyncPodManager):
    """The triggerer's AsyncPodManager, logging container lines through a :class:`PodLogRelay`."""

    def __init__(self, *args, relay: PodLogRelay | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.relay = relay or PodLogRelay(logger_emit(self.log))

    def _emit_container_logs(self, logs, now, container_name) -> None:
        now_seconds = now.replace(microsecond=0)
        for line in logs:
            timestamp, message = parse_log_line(line)
            # Lines of the current second are read again by the next fetch (the API only takes
            # since_seconds), as in the provider.
            if timestamp and timestamp.replace(microsecond=0) == now_seconds:
                break
            self.relay.feed(message)


class VlmprobePodTrigger(KubernetesPodTrigger):
    """The provider's pod trigger with pod lines at their own level.

    On a user's kill it deletes the pod like the provider's trigger; when the triggerer's Role
    is read-only (the chart's default) it says so and how to stop the pod instead of a traceback.
    """

    def serialize(self):
        _, kwargs = super().serialize()
        return f"{__name__}.{type(self).__name__}", kwargs

    @cached_property
    def pod_manager(self) -> AsyncPodManager:
        return RelayingAsyncPodManager(async_hook=self.hook)

    async def on_kill(self) -> None:
        if self._fired_event or self.on_kill_action == OnKillAction.KEEP_POD:
            return await super().on_kill()
        try:
            await self.hook.delete_pod(name=self.pod_name, namespace=self.pod_namespace,
                                       grace_period_seconds=self.termination_grace_period)
            self.log.info("Deleted pod %s/%s.", self.pod_namespace, self.pod_name)
        except Exception as e:
            if str(getattr(e, "status", "")) != "403":
                self.log.exception("Could not delete pod %s/%s", self.pod_namespace, self.pod_name)
                return
            self.log.warning(
                "The triggerer may not delete pods (read-only Role; helm value rbac.triggererDeletesPods): "
                "pod %s/%s runs on until it ends or reaches its activeDeadlineSeconds. Stop it now with: "
                "kubectl -n %s delete pod %s", self.pod_namespace, self.pod_name, self.pod_namespace, self.pod_name)
