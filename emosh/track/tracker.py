"""EHM Tracker: frames → MediaPipe landmarks → windowed body-model fit → ``EHMTrack``.

Streaming: frames are detected one by one and only their landmarks are kept; every ``window`` frames the fitter
optimises that window, warm-started from (and smoothed against) the end of the previous one. So memory grows
with the number of frames by a few kilobytes only, and long videos work.
Reference mode fits one image with many more iterations and also optimises the body shape (Anny's phenotypes, or
the SMPL-X and FLAME betas).
"""
from __future__ import annotations

import itertools
import math
import os
import queue
import threading
from typing import Callable, Iterable

import numpy as np
import roma
import torch

from ..body.camera import default_focal
from ..body.joints import slerp_rotvec
from ..body.model import BodyModel
from ..body.track import CONF_GATE, EHMTrack, seen_landmarks
from ..errors import EmoshError, InputError, NoPersonError
from ..temporal import gaussian_filter
from .detect import FrameDetection
from .fit import Fitter, FitSettings, FitState, Targets

DEFAULT_WINDOW = 32
CONTEXT = 4  # frames of the previous window that the smoothness term sees
VIDEO_ITERATIONS = 60
FIRST_WINDOW_ITERATIONS = 100
REFERENCE_ITERATIONS = 300
# σ of the offline parameter smoothing: 0.06 s, and at least 1.5 frames, because the optimiser's noise is
# independent from frame to frame whatever the frame rate (at 15 fps, 0.9 frames left half-body jitter at 0.88)
FILTER_SECONDS = 0.06
FILTER_MIN_FRAMES = 1.5
LAG_GATE = (1.5, 3.0)  # % of the box: frames whose fit smoothing worsens by more are unsmoothed (fully at 3)


class TrackingCancelled(EmoshError):
    """The caller's cancel() asked to stop."""


def person_box_height(landmarks: np.ndarray, confidence: np.ndarray, image_size: tuple[int, int]) -> float:
    """Height (px) of the box around the confidently seen landmarks inside the image; 0 when nothing is seen."""
    ok = seen_landmarks(landmarks, confidence, image_size)
    if ok.sum() < 2:
        return 0.0
    ys = landmarks[ok, 1]
    return float(ys.max() - ys.min())


def _targets(dets: list[FrameDetection], image_size: tuple[int, int], device: torch.device,
             arkit: bool = True) -> Targets:
    """A window's detections as fitting targets; MediaPipe's blendshape scores only for an ARKit-action model."""
    lm = np.stack([d.landmarks for d in dets]).astype(np.float32)
    conf = np.stack([d.confidence for d in dets]).astype(np.float32)
    weights = np.where(seen_landmarks(lm, conf, image_size), conf, 0.0).astype(np.float32)
    box = np.array([person_box_height(a, c, image_size) for a, c in zip(lm, conf)], np.float32)
    seen = box > 0
    fallback = float(np.median(box[seen])) if seen.any() else float(image_size[0])
    # a steady box keeps the loss scale constant across frames; a floor guards tiny partial detections
    box = np.full_like(box, max(fallback, 0.1 * image_size[0]))
    blend = None
    if arkit and any(d.blendshapes is not None for d in dets):
        blend = np.stack([d.blendshapes if d.blendshapes is not None else np.full(52, np.nan, np.float32)
                          for d in dets]).astype(np.float32)
    world = None
    if any(d.world_body is not None for d in dets):
        world = np.stack([d.world_body if d.world_body is not None else np.full((33, 3), np.nan, np.float32)
                          for d in dets]).astype(np.float32)
    mask = None
    if all(d.mask is not None and d.mask.shape == tuple(image_size) for d in dets):
        mask = np.stack([d.mask for d in dets]).astype(np.float32)
    as_t = lambda a: None if a is None else torch.from_numpy(a).to(device)  # noqa: E731
    return Targets(as_t(lm), as_t(weights), as_t(box), as_t(blend), as_t(world), as_t(mask))


def _interpolate(values: torch.Tensor, detected: torch.Tensor) -> torch.Tensor:
    """Linear interpolation over frames where ``detected`` is False (held constant before/after the ends)."""
    t = values.shape[0]
    idx = torch.nonzero(detected).squeeze(1)
    if idx.numel() == t or idx.numel() == 0:
        return values
    frames = torch.arange(t, device=values.device)
    right = torch.searchsorted(idx, frames).clamp(max=idx.numel() - 1)
    left = (right - 1).clamp(min=0)
    right_f, left_f = idx[right], idx[left]
    # frames before the first / after the last detection copy the nearest one
    left_f = torch.where(frames < idx[0], idx[0], left_f)
    right_f = torch.where(frames > idx[-1], idx[-1], right_f)
    exact = detected
    span = (right_f - left_f).clamp(min=1).to(values.dtype)
    alpha = ((frames - left_f).to(values.dtype) / span).clamp(0, 1)
    alpha = alpha.view(-1, *([1] * (values.dim() - 1)))
    filled = (1 - alpha) * values[left_f] + alpha * values[right_f]
    return torch.where(exact.view(-1, *([1] * (values.dim() - 1))), values, filled)


class WindowedTracker:
    """Incremental fit: ``push`` detections frame by frame, ``finish`` returns the EHMTrack."""

    def __init__(self, model: BodyModel, image_size: tuple[int, int], *, fps: float, focal: float | None = None,
                 reference: bool = False, iterations: int | None = None, smoothing: float = 1.0,
                 window: int = DEFAULT_WINDOW, shape: torch.Tensor | None = None,
                 first_window_iterations: int | None = None, filter_sigma: float | None = None,
                 silhouette: bool = True):
        self.model = model
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.fps = float(fps)
        self.focal = float(focal) if focal else default_focal(self.image_size)
        self.reference = reference
        # offline zero-phase smoothing of the fitted parameters (frames); removes the optimiser's per-frame noise
        if filter_sigma is None:
            filter_sigma = max(FILTER_SECONDS * self.fps, FILTER_MIN_FRAMES) * float(smoothing)
        self.filter_sigma = filter_sigma
        settings = FitSettings()
        if not silhouette:  # landmarks alone (the bench's baseline for the silhouette term)
            settings.silhouette_iterations = 0
        w = settings.weights
        for name in ("smooth_pose", "smooth_global", "smooth_depth", "smooth_expr"):
            setattr(w, name, getattr(w, name) * float(smoothing))
        self.fitter = Fitter(model, self.image_size, self.focal, settings)
        self.iterations = iterations or (REFERENCE_ITERATIONS if reference else VIDEO_ITERATIONS)
        self.first_iterations = first_window_iterations or max(self.iterations, FIRST_WINDOW_ITERATIONS)
        self.window = 1 if reference else int(window)
        self.shape = (shape if shape is not None else model.default_shape()).to(model.device, torch.float32)
        self.shape_fitted = shape is not None
        self._pending: list = []
        self._states: list[FitState] = []
        self._landmarks: list[np.ndarray] = []
        self._confidence: list[np.ndarray] = []
        self._people: list[int] = []
        self._last: FitState | None = None

    def push(self, det: FrameDetection) -> None:
        self._pending.append(det)
        self._landmarks.append(np.asarray(det.landmarks, np.float32))
        self._confidence.append(np.asarray(det.confidence, np.float32))
        self._people.append(int(det.num_people))
        if len(self._pending) >= self.window:
            self._fit_pending()

    def _fit_pending(self) -> None:
        dets, self._pending = self._pending, []
        targets = _targets(dets, self.image_size, self.model.device, self.model.expression_kind == "arkit")
        detected = (targets.weights > 0).any(1)
        if not detected.any():  # nothing to fit: keep a gap state, filled by interpolation at the end
            base = self._last
            self._states.append(_gap_state(self.fitter, len(dets), base))
            return
        first = self._last is None
        init = self.fitter.initial_state(targets, self.shape, None if first else self._last)
        fit_shape = self.reference or (first and not self.shape_fitted)
        iters = self.iterations if (self.reference or not first) else self.first_iterations
        context = None if self._last is None else self._context()
        state, shape = self.fitter.fit(targets, self.shape, init, context, fit_shape=fit_shape, iterations=iters)
        if fit_shape:
            self.shape, self.shape_fitted = shape, True
        self._states.append(state)
        self._last = state

    def _context(self) -> FitState:
        tail = [s for s in self._states][-2:]
        joined = tail[0] if len(tail) == 1 else tail[0].cat(tail[1])
        return joined.index(slice(-CONTEXT, None))

    def _smooth(self, track: EHMTrack) -> EHMTrack:
        """Zero-phase Gaussian smoothing of the fitted parameters (the optimiser's per-frame noise), undone on the
        frames where it pulls the fitted landmarks off the detections, i.e. fast moves that a filter lags (a lunge
        at the camera in the half-body clip went from 5 % to 29 % of the box)."""
        motion = track.motion()
        rotations = roma.rotvec_to_rotmat(motion["global_orient"])  # smoothed as matrices: no axis-angle wrap
        smooth = {k: gaussian_filter(v, self.filter_sigma) for k, v in motion.items()}
        smooth["global_orient"] = roma.rotmat_to_rotvec(roma.special_procrustes(
            gaussian_filter(rotations, self.filter_sigma)))
        smoothed = track.replace(**smooth)
        cost = _median_error(smoothed, self.model) - _median_error(track, self.model)
        low, high = LAG_GATE
        keep = torch.nan_to_num((cost - low) / (high - low)).clamp(0.0, 1.0)  # 1 = the unsmoothed fit
        out = {k: torch.lerp(smooth[k], motion[k], keep[:, None]) for k in ("translation", "expression")}
        out["pose"] = slerp_rotvec(smooth["pose"], motion["pose"], keep[:, None])
        out["global_orient"] = slerp_rotvec(smooth["global_orient"], motion["global_orient"], keep)
        return track.replace(**out)

    def finish(self, meta: dict[str, str] | None = None) -> EHMTrack:
        if self._pending:
            self._fit_pending()
        if not self._states:
            raise InputError("No frames were given to the tracker")
        conf = torch.from_numpy(np.stack(self._confidence))
        detected = (conf >= CONF_GATE).any(1)
        if not detected.any():
            raise NoPersonError(
                f"No person was detected in any of the {conf.shape[0]} frames; use footage where a person is "
                f"clearly visible (the whole body or at least the face and shoulders).")
        state = self._states[0]
        for s in self._states[1:]:
            state = state.cat(s)
        dev = state.q.device
        det_dev = detected.to(dev)
        # frames without detections: straight lines between their detected neighbours (held at the ends)
        motion = {k: _interpolate(v, det_dev).detach().float() for k, v in self.fitter.motion(state).items()}
        t = state.q.shape[0]
        cam_R = self.fitter.cam_R.expand(t, 3, 3).contiguous()
        info = {"source": "emosh.track", "reference": str(self.reference), "focal_px": f"{self.focal:.2f}",
                "max_people": str(max(self._people))}
        info.update(meta or {})
        track = EHMTrack(
            backend=self.model.backend, backend_version=self.model.version, shape=self.shape.detach().float(),
            **motion, focal=torch.full((t,), self.focal, device=dev), cam_R=cam_R.float(),
            cam_t=torch.zeros(t, 3, device=dev), confidence=conf.to(dev), detected=det_dev, image_size=self.image_size,
            fps=self.fps, landmarks2d=torch.from_numpy(np.stack(self._landmarks)).to(dev), meta=info)
        return self._smooth(track) if self.filter_sigma > 0 and t > 2 else track


def _gap_state(fitter: Fitter, frames: int, base: FitState | None) -> FitState:
    if base is not None:
        last = base.index(slice(-1, None))
        return FitState(last.q.repeat(frames, 1, 1), last.orient.repeat(frames, 1), last.cam.repeat(frames, 1),
                        last.expr.repeat(frames, 1))
    dev = fitter.device
    q = fitter.basis.mean[None].repeat(frames, 1, 1)
    return FitState(q, torch.zeros(frames, 3, device=dev),
                    torch.tensor([[0.0, 0.0, math.log(3.0)]], device=dev).repeat(frames, 1),
                    torch.zeros(frames, fitter.n_expr, device=dev))


def track_frames(frames: Iterable[np.ndarray], body_model: BodyModel, *, reference: bool = False,
                 fps: float = 25.0, focal: float | None = None, iterations: int | None = None,
                 smoothing: float = 1.0, window: int = DEFAULT_WINDOW, backend: str = "auto",
                 model_dir: str | os.PathLike | None = None, progress: Callable[[int], None] | None = None,
                 cancel: Callable[[], bool | None] | None = None, meta: dict[str, str] | None = None,
                 silhouette: bool = True) -> EHMTrack:
    """Track one person through RGB uint8 frames (an iterator is consumed once, frame by frame).

    ``reference``: a single photo (static detection, many iterations, shape optimised). ``focal`` in pixels
    (default: a 50° field of view). ``smoothing`` scales every temporal term. ``progress(frames_done)``;
    ``cancel()`` returning True (or raising) stops the work. ``silhouette``: in reference mode, fit the body's
    girth to the detector's person mask as well as the landmarks.
    Decoding + detection run in a background thread while windows are fitted, so both CPU cores work.
    """
    from .detect import Detector

    tracker: WindowedTracker | None = None
    count = 0
    if reference:
        frames = itertools.islice(iter(frames), 1)
    with Detector(backend, model_dir=model_dir, static_image=reference) as detector:
        for size, det in _detect_in_background(frames, detector):
            if cancel is not None and cancel():
                raise TrackingCancelled("Tracking was cancelled")
            if tracker is None:
                tracker = WindowedTracker(body_model, size, fps=fps, focal=focal, reference=reference,
                                          iterations=iterations, smoothing=smoothing, window=window,
                                          silhouette=silhouette)
            tracker.push(det)
            count += 1
            if progress is not None:
                progress(count)
    if tracker is None:
        raise InputError("The input has no frames")
    return tracker.finish(meta)


_END = object()


def _detect_in_background(frames: Iterable[np.ndarray], detector, queue_size: int = 2 * DEFAULT_WINDOW):
    """Yield (image size, detection) per frame; decode + detect run in a worker thread (bounded queue)."""
    results: queue.Queue = queue.Queue(maxsize=queue_size)
    stop = threading.Event()

    def put(item) -> None:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def work() -> None:
        try:
            for frame in frames:
                if stop.is_set():
                    return
                put((frame.shape[:2], detector(frame)))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(exc)
        finally:
            put(_END)

    worker = threading.Thread(target=work, name="emosh-detect", daemon=True)
    worker.start()
    try:
        while True:
            item = results.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def track_file(path: str | os.PathLike, body_model: BodyModel, *, start: int = 0, max_frames: int | None = None,
               reference: bool | None = None, long_side: int | None = None, **kwargs) -> EHMTrack:
    """Track an image (reference mode by default) or a video file (streamed, decoded frame by frame).
    ``long_side``: resize frames first (the track's image size is then the resized one)."""
    from ..video import is_image, iter_frames, probe_video, read_image, resize_long_side

    meta = {"input": os.path.basename(str(path)), "start": str(start)}
    resize = (lambda f: f) if not long_side else (lambda f: resize_long_side(f, long_side))  # noqa: E731
    if is_image(path):
        ref = True if reference is None else reference
        return track_frames([resize(read_image(path))], body_model, reference=ref, fps=kwargs.pop("fps", 25.0),
                            meta=meta, **kwargs)
    info = probe_video(path)
    fps = kwargs.pop("fps", None) or info.fps
    frames = (resize(f) for f in iter_frames(path, start=start, max_frames=max_frames))
    return track_frames(frames, body_model, reference=bool(reference), fps=fps, meta=meta, **kwargs)


def fitted_landmarks2d(track: EHMTrack, model: BodyModel, chunk: int = 64) -> torch.Tensor:
    """[T, 553, 2] pixel positions of the landmarks on the fitted mesh (through the track's own camera)."""
    from ..body.camera import project
    from .fit import LandmarkBody

    body = LandmarkBody(model)
    out = []
    with torch.no_grad():
        rest = body.rest(track.shape.to(model.device))
        for a in range(0, track.num_frames, chunk):
            part = track.frames(a, a + chunk).to(model.device)
            pts = body.landmarks(rest, **part.motion())
            out.append(project(pts, part.focal, part.cam_R, part.cam_t, track.image_size))
    return torch.cat(out)


def landmark_errors_pct(fitted: torch.Tensor, detected: torch.Tensor, confidence: torch.Tensor,
                        image_size: tuple[int, int]) -> torch.Tensor:
    """[T, N] distance between fitted and detected landmarks in % of each frame's person box height; NaN where a
    point is not seen (:func:`seen_landmarks`) or the frame shows no person."""
    seen = seen_landmarks(detected, confidence, image_size)
    box = torch.tensor([person_box_height(a, c, image_size) for a, c in
                        zip(detected.cpu().numpy(), confidence.cpu().numpy())], device=fitted.device)
    errors = (fitted - detected).norm(dim=-1) / box.clamp(min=1e-6)[:, None] * 100.0
    return errors.masked_fill(~seen | (box[:, None] <= 0), float("nan"))


def _median_error(track: EHMTrack, model: BodyModel) -> torch.Tensor:
    """[T] per-frame median of :func:`landmark_errors_pct` (NaN where nothing is seen)."""
    errors = landmark_errors_pct(fitted_landmarks2d(track, model), track.landmarks2d, track.confidence,
                                 track.image_size)
    return errors.nanmedian(dim=1).values


def reprojection_error_pct(track: EHMTrack, model: BodyModel, fitted: torch.Tensor | None = None) -> float:
    """Median of :func:`landmark_errors_pct` over every frame and seen point of a track."""
    if track.landmarks2d is None:
        raise InputError("The track has no detected landmarks to compare with")
    fitted = fitted_landmarks2d(track, model) if fitted is None else fitted
    errors = landmark_errors_pct(fitted, track.landmarks2d.to(fitted), track.confidence.to(fitted), track.image_size)
    return float(errors.nanmedian()) if not errors.isnan().all() else float("nan")
