"""The server side of monitoring: per-version state, the request hook and the Prometheus collector.

The data plane calls :meth:`Monitoring.begin` per request before decoding (reads the
``abstain`` parameter and the ``quality`` output) and :meth:`Watch.finish` with the model's
outputs (the prediction log for feedback; abstention and the ``quality`` output).  The
images' features and quality checks are computed one of two ways:

* a request that asks for ``quality`` or abstention needs its own images' checks in its
  answer: :meth:`Watch.assess` runs in the request's thread while the batch runs;
* every other request is *deferred*: the batcher hands its rows and outputs to
  :meth:`Monitoring.observe_batch` after answering.  The batches wait there briefly (see
  :data:`BACKGROUND_LINGER_S`) and are assessed together on a background thread
  (:mod:`.background`), off the latency path.

Either way every image lands in the drift windows and quality tallies once.  Metrics are
produced at scrape time by one collector from the versions being served, so an unloaded
version's series vanish; a scrape first waits briefly for the queued background work.

Example::

    monitoring = Monitoring(settings, registry)
    watch = monitoring.begin(request)
    ...
"""

from __future__ import annotations

import collections
import logging
import threading
import uuid
from dataclasses import dataclass

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from histoedge.export.manifest import IMAGE_BYTES, LABEL, PROBABILITIES
from histoedge.serving import images as image_codec
from histoedge.serving.errors import InvalidInputError, ModelNotFoundError
from histoedge.serving.monitoring import quality
from histoedge.serving.monitoring.background import BackgroundObserver
from histoedge.serving.monitoring.drift import RowWindow, psi
from histoedge.serving.monitoring.feedback import MAX_ID_CHARS, Outcomes, Prediction, PredictionLog
from histoedge.serving.monitoring.profile import REASONS, prediction_values
from histoedge.serving.schema import Tensor, TensorMetadata

log = logging.getLogger(__name__)

QUALITY = "quality"
ABSTAIN = "abstain"
WINDOWS = ("count", "time")
TIME_WINDOW_MAX_IMAGES = 20_000  # the time window holds at most this many images (memory bound)
BACKGROUND_BATCHES = 256  # batches that may wait for background assessment before images are skipped
# Deferred batches are assessed together: the first waits up to BACKGROUND_LINGER_S (or until
# BACKGROUND_FILL_ROWS rows wait, or a scrape) for more.  At concurrency 1 this turns one
# assessment per request into one per ~16 64-px requests, which costs less per image and delays
# one answer in many instead of every one (bench/results/serving.md, the c=1 breakdown).
BACKGROUND_LINGER_S = 0.05
BACKGROUND_FILL_ROWS = 32
SCRAPE_WAIT_S = 2.0       # a scrape waits this long at most for queued background work


def flag_parameter(parameters: dict, name: str, default: bool) -> bool:
    """A boolean request parameter (bool, or the strings true/false); else InvalidInputError."""
    value = parameters.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise InvalidInputError(f"request parameter '{name}' must be a boolean, not {str(value)[:40]!r}")


def refuse_monitoring_options(request) -> None:
    """With ``--no-monitoring``: refuse a request that asks for ``quality`` or ``abstain``."""
    if QUALITY in request.outputs or ABSTAIN in (getattr(request, "parameters", None) or {}):
        raise InvalidInputError("this server runs with --no-monitoring: no 'quality' output, no abstain")


def aspect_ratios(inputs: list[Tensor]) -> np.ndarray | None:
    """Width / height of each encoded image before resizing (None for pixel tensors).

    Call only after the images were decoded: decoding validated them.
    """
    if not inputs or inputs[0].name != IMAGE_BYTES:
        return None
    ratios = np.empty(inputs[0].data.size)
    for index, data in enumerate(inputs[0].data.reshape(-1)):
        _, width, height = image_codec.image_dimensions(bytes(data))
        ratios[index] = width / height
    return ratios


class VersionMonitor:
    """Quality tallies, drift windows and labelled outcomes of one served model version."""

    def __init__(self, model, settings) -> None:
        manifest = model.manifest
        self.model, self.name, self.version = model, manifest.name, manifest.version
        self.profile = getattr(model, "profile", None)
        binary = len(manifest.classes) == 2 and manifest.positive_class is not None
        self.positive_class = manifest.positive_class if binary else None
        self.band = getattr(manifest, "uncertainty_band", None)
        profile = self.profile
        features = [] if profile is None else [n for n in profile.features if n in quality.COLUMNS]
        predictions = [] if profile is None else list(profile.predictions)
        self.streams = ([(n, profile.features[n]) for n in features]
                        + [(n, profile.predictions[n]) for n in predictions])
        self._feature_columns = [quality.COLUMNS.index(n) for n in features]
        self._predictions = predictions
        self.window_images = settings.drift_window_images
        self.window_seconds = settings.drift_window_seconds
        self.rows = RowWindow(len(self.streams) + 2, max(settings.drift_window_images, TIME_WINDOW_MAX_IMAGES))
        self.images = 0
        self.skipped = 0  # images not assessed because the background queue was full
        self.failures: collections.Counter[str] = collections.Counter()
        self.abstentions: collections.Counter[str] = collections.Counter()
        self.outcomes = Outcomes(settings.feedback_window, self.positive_class)
        self._lock = threading.Lock()

    def observe(self, assessment: quality.Assessment, probabilities: np.ndarray, predicted: np.ndarray,
                in_band: np.ndarray, abstained: list[str | None]) -> None:
        """Record a request's images: one row each in the window, failures and abstentions tallied."""
        values = prediction_values(probabilities, self.positive_class) if self._predictions else {}
        positive = predicted == self.positive_class if self.positive_class is not None else np.zeros(len(predicted))
        self.rows.add(np.column_stack([assessment.values[:, self._feature_columns],
                                       *(values[name] for name in self._predictions), positive, in_band]))
        with self._lock:
            self.images += len(predicted)
            if assessment.any_failed:
                for failed in assessment.failed:
                    self.failures.update(failed)
            for reason in abstained:
                if reason:
                    self.abstentions[reason] += 1

    def skip(self, images: int) -> None:
        """Count images that monitoring could not assess (its background queue was full)."""
        with self._lock:
            self.skipped += images

    def snapshot(self) -> dict:
        """Everything the collector exports; the windows are binned here, at scrape time."""
        windows = {}
        for name, rows in (("count", self.rows.last(self.window_images)),
                           ("time", self.rows.since(self.window_seconds))):
            windows[name] = {
                "images": len(rows), "positive": float(rows[:, -2].sum()), "uncertain": float(rows[:, -1].sum()),
                "psi": {stream: psi(np.bincount(dist.bins(rows[:, j]), minlength=len(dist.fractions)),
                                    dist.fractions)
                        for j, (stream, dist) in enumerate(self.streams)} if len(rows) else {}}
        with self._lock:
            return {"images": self.images, "skipped": self.skipped, "failures": dict(self.failures),
                    "abstentions": dict(self.abstentions), "windows": windows,
                    "outcomes": self.outcomes.rates()}


@dataclass
class FeedbackResult:
    model: str
    version: int
    predicted: str
    correct: bool
    labels: int


@dataclass
class Watch:
    """One request's monitoring: created by :meth:`Monitoring.begin`."""

    monitoring: "Monitoring"
    request_id: str
    abstain: bool
    quality: bool
    outputs: list[str]
    assessment: quality.Assessment | None = None

    @property
    def deferred(self) -> bool:
        """True when the answer needs no checks: the batch is assessed in the background."""
        return not (self.quality or self.abstain)

    def assess(self, model, rows: np.ndarray, inputs: list[Tensor]) -> None:
        """Features and checks of the decoded ``rows`` (call while the batch runs)."""
        self.assessment = quality.assess(rows, getattr(model, "profile", None), aspect_ratios(inputs))

    def finish(self, model, outputs: dict, tensors: list[Tensor]) -> list[Tensor]:
        """Record the answer; return the output tensors with abstention and ``quality`` applied.

        A deferred request (see :attr:`deferred`) only enters the prediction log here; its
        images reach the windows through :meth:`Monitoring.observe_batch`.
        """
        assessment = self.assessment
        probabilities = np.asarray(outputs[PROBABILITIES])
        predicted = model.predicted_classes(probabilities)
        self.monitoring.predictions.remember(
            self.request_id, [Prediction(model.name, model.version, int(p)) for p in predicted])
        if self.deferred:
            return tensors
        monitor = self.monitoring.monitor(model)
        in_band = quality.uncertain(probabilities, monitor.band, monitor.positive_class)
        reasons = quality.abstentions(assessment, in_band) if self.abstain else [None] * len(predicted)
        monitor.observe(assessment, probabilities, predicted, in_band, reasons)
        result = []
        for tensor in tensors:
            if tensor.name == LABEL and self.abstain:
                labels = tensor.data.copy()
                for index, reason in enumerate(reasons):
                    if reason:
                        labels[index] = quality.INDETERMINATE.encode()
                tensor = Tensor(tensor.name, tensor.datatype, labels)
            result.append(tensor)
        if self.quality:
            data = np.empty(len(predicted), dtype=object)
            data[:] = [quality.quality_json(assessment, i, reasons[i]) for i in range(len(predicted))]
            result.append(Tensor(QUALITY, "BYTES", data))
        return result


class Monitoring:
    """Monitoring of every served version; registers its collector in ``registry``.

    Args:
        settings: :class:`~histoedge.serving.settings.ServerSettings` (windows, defaults).
        registry: the server's Prometheus registry.
        background: where deferred requests are assessed (default: a thread whose jobs linger
            :data:`BACKGROUND_LINGER_S`).
        max_pending: deferred batches that may wait; the images of more are counted as skipped.
    """

    def __init__(self, settings, registry, background: BackgroundObserver | None = None,
                 max_pending: int = BACKGROUND_BATCHES) -> None:
        self.settings = settings
        self.predictions = PredictionLog(settings.prediction_memory)
        self._monitors: dict[tuple[str, int], VersionMonitor] = {}
        self._lock = threading.Lock()
        self.reports: collections.Counter[str] = collections.Counter()
        self._background = background or BackgroundObserver(name="monitoring", linger_s=BACKGROUND_LINGER_S)
        self._max_pending = max_pending
        self._pending: list[_Deferred] = []   # guarded by _pending_lock
        self._pending_rows = 0
        self._flush_queued = False
        self._pending_lock = threading.Lock()
        registry.register(_Collector(self))

    def close(self) -> None:
        """Finish the queued background assessments and stop their thread."""
        self._background.close()

    def begin(self, request) -> Watch:
        """Read the request's monitoring options; an id is made up when the request has none."""
        parameters = getattr(request, "parameters", {}) or {}
        abstain = flag_parameter(parameters, ABSTAIN, self.settings.abstain)
        wants_quality = QUALITY in request.outputs
        outputs = [name for name in request.outputs if name != QUALITY]
        request_id = (request.id or uuid.uuid4().hex)[:MAX_ID_CHARS]
        return Watch(self, request_id, abstain, wants_quality, outputs)

    def note(self, watch: Watch | None, inputs: list[Tensor]) -> object:
        """What the batcher carries for a deferred request (its images' aspect ratios or ``()``)."""
        if watch is None or not watch.deferred:
            return None
        ratios = aspect_ratios(inputs)
        return () if ratios is None else ratios

    def observe_batch(self, model, batch: np.ndarray, outputs: dict, parts: list[tuple[int, object]]) -> None:
        """The batcher's delivery hook: queue the deferred requests' rows for background assessment.

        ``parts`` holds each request's (row count, :meth:`note`); rows whose note is None were
        assessed in their request's thread.
        """
        keep, ratios, offset = [], [], 0
        for count, note in parts:
            if note is not None:
                keep.append(np.arange(offset, offset + count))
                ratios.append(np.asarray(note, dtype=np.float64) if len(note) else np.full(count, np.nan))
            offset += count
        if not keep:
            return
        index, ratios = _joined(keep), _joined(ratios)
        rows = batch if len(index) == len(batch) else batch[index]
        probabilities = np.asarray(outputs[PROBABILITIES])
        probabilities = probabilities if len(index) == len(probabilities) else probabilities[index]
        monitor = self.monitor(model)
        with self._pending_lock:
            if len(self._pending) >= self._max_pending:
                monitor.skip(len(index))
                return
            self._pending.append(_Deferred(monitor, rows, probabilities, ratios))
            self._pending_rows += len(index)
            submit, self._flush_queued = not self._flush_queued, True
            full = self._pending_rows >= BACKGROUND_FILL_ROWS
        if submit and not self._background.submit(self._assess_pending):
            for deferred in self._take_pending():   # the observer is closed or full: nothing will run them
                deferred.monitor.skip(len(deferred.rows))
        elif full:
            self._background.hurry()

    def _take_pending(self) -> list["_Deferred"]:
        with self._pending_lock:
            pending, self._pending = self._pending, []
            self._pending_rows, self._flush_queued = 0, False
        return pending

    def _assess_pending(self) -> None:
        """The background job: every deferred batch waiting, assessed once per model version."""
        groups: dict[int, list[_Deferred]] = {}
        for deferred in self._take_pending():
            groups.setdefault(id(deferred.monitor), []).append(deferred)
        for group in groups.values():
            monitor = group[0].monitor
            rows = _joined([d.rows for d in group])
            probabilities = _joined([d.probabilities for d in group])
            ratios = _joined([d.ratios for d in group])
            aspect = None if np.isnan(ratios).all() else ratios
            try:
                assessment = quality.assess(rows, monitor.profile, aspect)
                predicted = monitor.model.predicted_classes(probabilities)
                in_band = quality.uncertain(probabilities, monitor.band, monitor.positive_class)
                monitor.observe(assessment, probabilities, predicted, in_band, [None] * len(predicted))
            except Exception:  # noqa: BLE001 - one version's failure must not lose the others' images
                log.exception("monitoring of %s version %s failed on %d images", monitor.name, monitor.version,
                              len(rows))

    def monitor(self, model) -> VersionMonitor:
        key = (model.name, model.version)
        monitor = self._monitors.get(key)
        if monitor is None or monitor.model is not model:
            with self._lock:
                monitor = self._monitors.get(key)
                if monitor is None or monitor.model is not model:
                    monitor = self._monitors[key] = VersionMonitor(model, self.settings)
        return monitor

    def retain(self, served: set[tuple[str, int]]) -> None:
        """Forget the versions that are no longer served (their series vanish)."""
        with self._lock:
            for key in [k for k in self._monitors if k not in served]:
                del self._monitors[key]

    def output_metadata(self) -> TensorMetadata:
        return TensorMetadata(QUALITY, "BYTES", (-1,))

    def feedback(self, request_id: str, index: int, label: str) -> FeedbackResult:
        """Record the true ``label`` of image ``index`` of request ``request_id``."""
        request_id = request_id[:MAX_ID_CHARS]
        prediction = self.predictions.find(request_id, index)
        if prediction is None:
            self.reports["unknown_id"] += 1
            raise ModelNotFoundError(
                f"no recent prediction for request id {request_id[:64]!r} image {index} (the server "
                f"remembers the last {self.settings.prediction_memory} predicted images)")
        monitor = self._monitors.get((prediction.model, prediction.version))
        if monitor is None:
            self.reports["unknown_id"] += 1
            raise ModelNotFoundError(f"model {prediction.model} version {prediction.version} is no longer served")
        classes = monitor.model.manifest.classes
        if label not in classes:
            self.reports["bad_label"] += 1
            raise InvalidInputError(f"label {label[:64]!r} is not one of the model's classes {list(classes)}")
        true = classes.index(label)
        monitor.outcomes.add((request_id, index), prediction.predicted, true)
        self.reports["recorded"] += 1
        rates = monitor.outcomes.rates()
        return FeedbackResult(prediction.model, prediction.version, classes[prediction.predicted],
                              prediction.predicted == true, int(rates["labels"]))

    def snapshots(self) -> list[tuple[VersionMonitor, dict]]:
        self._background.drain(SCRAPE_WAIT_S)  # so a scrape after a response counts its images
        with self._lock:
            monitors = list(self._monitors.values())
        return [(monitor, monitor.snapshot()) for monitor in monitors]


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


@dataclass(frozen=True, eq=False)
class _Deferred:
    """One batch's deferred rows, waiting for the background assessment (``monitor.model`` ran them)."""

    monitor: "VersionMonitor"
    rows: np.ndarray
    probabilities: np.ndarray
    ratios: np.ndarray  # aspect ratio of each row's source image; NaN where unknown


class _Collector:
    """Builds the monitoring metrics at scrape time."""

    def __init__(self, monitoring: Monitoring) -> None:
        self.monitoring = monitoring

    def describe(self):
        return []

    def collect(self):
        labels = ["model", "version"]
        images = CounterMetricFamily("histoedge_quality_images", "images checked for quality", labels=labels)
        skipped = CounterMetricFamily("histoedge_quality_skipped_images", "images served but not checked "
                                      "because monitoring's background queue was full", labels=labels)
        failures = CounterMetricFamily("histoedge_quality_failures", "images failing a quality check, by reason",
                                       labels=labels + ["reason"])
        abstentions = CounterMetricFamily("histoedge_abstentions", "images answered 'indeterminate', by reason",
                                          labels=labels + ["reason"])
        drift = GaugeMetricFamily("histoedge_drift_psi", "population stability index of a feature or "
                                  "prediction in a sliding window against the reference profile",
                                  labels=labels + ["feature", "window"])
        window_images = GaugeMetricFamily("histoedge_window_images", "images in the sliding window",
                                          labels=labels + ["window"])
        positive = GaugeMetricFamily("histoedge_positive_rate", "share of positive predictions in the window",
                                     labels=labels + ["window"])
        low = GaugeMetricFamily("histoedge_low_confidence_rate",
                                "share of predictions inside the uncertainty band in the window",
                                labels=labels + ["window"])
        feedback = {name: GaugeMetricFamily(f"histoedge_feedback_{name}", text, labels=labels) for name, text in (
            ("labels", "labelled outcomes in the feedback window"),
            ("accuracy", "accuracy of the labelled outcomes in the feedback window"),
            ("sensitivity", "sensitivity (recall of the positive class) of the labelled outcomes"),
            ("specificity", "specificity of the labelled outcomes in the feedback window"))}
        for monitor, snap in self.monitoring.snapshots():
            key = [monitor.name, str(monitor.version)]
            images.add_metric(key, snap["images"])
            skipped.add_metric(key, snap["skipped"])
            for reason in REASONS:
                failures.add_metric(key + [reason], snap["failures"].get(reason, 0))
            for reason in ("quality", "uncertain"):
                abstentions.add_metric(key + [reason], snap["abstentions"].get(reason, 0))
            for window, totals in snap["windows"].items():
                window_images.add_metric(key + [window], totals["images"])
                for feature, value in totals["psi"].items():
                    drift.add_metric(key + [feature, window], value)
                if totals["images"]:
                    if monitor.positive_class is not None:
                        positive.add_metric(key + [window], totals["positive"] / totals["images"])
                    if monitor.band is not None:
                        low.add_metric(key + [window], totals["uncertain"] / totals["images"])
            for name, value in snap["outcomes"].items():
                feedback[name].add_metric(key, value)
        reports = CounterMetricFamily("histoedge_feedback_reports", "feedback reports by outcome",
                                      labels=["outcome"])
        for outcome in ("recorded", "unknown_id", "bad_label"):
            reports.add_metric([outcome], self.monitoring.reports[outcome])
        yield from (images, skipped, failures, abstentions, drift, window_images, positive, low, *feedback.values(), reports)
