"""``GET /metrics``: the server's state in the Prometheus text format, read at scrape time.

Everything but one metric is a view of what the server already holds (the job index, the
liveness monitor, the event bus, dataset build statuses), collected by ``SpoolCollector``
when Prometheus scrapes, so nothing is kept twice. The exception is the submit -> claim
latency, a Histogram observed when the event tracker sees a job leave queued/ for a host.
A private registry: the process-wide default one would mix in (and share between servers
in one test process) whatever else registers there.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .events import JOB, EventBus
from .hosts import ONLINE, LivenessMonitor
from .index import IndexedJob, JobIndex
from .sitedata.store import DatasetStore
from .states import JobState

log = logging.getLogger(__name__)

PREFIX = "opeva"
# Seconds from submit to a host's claim: an idle embedded worker takes milliseconds, a busy cluster hours.
CLAIM_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, float("inf"))
ALL_JOBS = 10_000_000  # a page size that is every job
CLAIMED = (JobState.DISPATCHED.value, JobState.RUNNING.value)


class SpoolCollector:
    """Collects the gauges from the server's live objects at each scrape."""

    def __init__(self, index: JobIndex, monitor: LivenessMonitor, bus: EventBus, datasets: DatasetStore | None):
        self.index = index
        self.monitor = monitor
        self.bus = bus
        self.datasets = datasets

    def collect(self) -> Iterator[Metric]:
        yield from self._jobs()
        yield from self._hosts()
        yield from self._dataset_builds()
        yield GaugeMetricFamily(f"{PREFIX}_event_streams", "Open /events streams.", value=self.bus.streams)
        yield GaugeMetricFamily(f"{PREFIX}_events_last_id", "Id of the newest event.", value=self.bus.last_id)

    def _jobs(self):
        by_state = GaugeMetricFamily(f"{PREFIX}_jobs", "Jobs by state.", labels=["state"])
        counts = self.index.counts()
        for state in JobState:
            if state.terminal or state in (JobState.QUEUED, JobState.WAITING):
                by_state.add_metric([state.value], counts.get(state.value, 0))
        # The index tells claimed jobs by location alone; dispatched or running is in each attempt record,
        # read once per job here.
        active = self.index.active()
        claimed = Counter(self.index.state_of(job).value for job in active)
        for state in CLAIMED:
            by_state.add_metric([state], claimed[state])
        yield by_state
        queued = GaugeMetricFamily(f"{PREFIX}_jobs_queued_by_target", "Queued jobs by target host ('any': any host).",
                                   labels=["target"])
        for target, count in sorted(Counter(job.entry.target for job in self._queued()).items()):
            queued.add_metric([target], count)
        yield queued
        running = GaugeMetricFamily(f"{PREFIX}_jobs_running_by_host", "Dispatched or running jobs by host.",
                                    labels=["host"])
        on_hosts = Counter(job.host for job in active)
        for host in sorted(set(self.monitor.hosts()) | set(on_hosts)):
            running.add_metric([host], on_hosts.get(host, 0))
        yield running

    def _queued(self) -> list[IndexedJob]:
        return self.index.page(JobState.QUEUED, limit=ALL_JOBS)[0]

    def _hosts(self):
        up = GaugeMetricFamily(f"{PREFIX}_host_up", "1 if the host's heartbeat is current (online), else 0.",
                               labels=["host"])
        age = GaugeMetricFamily(f"{PREFIX}_host_heartbeat_age_seconds",
                                "Seconds since this server saw the host's heartbeat change.", labels=["host"])
        free = GaugeMetricFamily(f"{PREFIX}_gpu_slots_free", "GPUs the host has free (its last heartbeat).",
                                 labels=["host"])
        total = GaugeMetricFamily(f"{PREFIX}_gpu_slots_total", "GPUs the host may hand out.", labels=["host"])
        for host in self.monitor.hosts():
            described = self.monitor.describe(host)
            up.add_metric([host], 1 if described["state"] == ONLINE else 0)
            age.add_metric([host], self.monitor.age(host))
            free.add_metric([host], len(described["free_gpus"] or ()))
            total.add_metric([host], len(described["gpu_ids"] or ()))
        yield from (up, age, free, total)

    def _dataset_builds(self):
        builds = GaugeMetricFamily(f"{PREFIX}_dataset_builds", "Dataset builds by state (building, ready, failed).",
                                   labels=["state"])
        states = self.datasets.builds_by_state() if self.datasets is not None else Counter()
        for state, count in sorted(states.items()):
            builds.add_metric([state], count)
        yield builds


class Metrics:
    """The registry /metrics renders, and the one metric observed as things happen."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, index: JobIndex, monitor: LivenessMonitor, bus: EventBus, datasets: DatasetStore | None):
        self.registry = CollectorRegistry()
        self.registry.register(SpoolCollector(index, monitor, bus, datasets))
        self.claim_latency = Histogram(f"{PREFIX}_submit_to_claim_seconds",
                                       "Seconds from a job's submission to this server seeing a host claim it.",
                                       buckets=CLAIM_LATENCY_BUCKETS, registry=self.registry)

    def on_job_event(self, event: dict, job: IndexedJob | None, live: bool) -> None:
        """Event listener: a job seen leaving queued/ for a host was claimed now (as near as this server knows)."""
        if not live or job is None or event["type"] != JOB:
            return
        if event["from"] == JobState.QUEUED.value and event["to"] in CLAIMED:
            self.claim_latency.observe(max(0.0, (time.time_ns() - job.entry.submit_ns) / 1e9))

    def render(self) -> bytes:
        return generate_latest(self.registry)
