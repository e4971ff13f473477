"""The worker's parameters and its answer to frames they do not fit: a
specific error naming the parameter or the window, never a map of zeros, and
never a worker that dies on one frame."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from ophyd_xspress.dranspose import MapParameters, XrfMapWorker
from ophyd_xspress.protocol import DEFAULT_SCALER_NAMES, StreamEncoder, make_frame


def _given(**values: str) -> dict[str, Any]:
    """Parameters as dranspose hands them over (``.value`` parsed)."""
    return {name: SimpleNamespace(value=value) for name, value in values.items()}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rois": '{"Fe": [655, 625]}'}, r"ROI window \[655, 625\] \(index \[0\]\)"),
        ({"rois": '{"Fe": [-1, 5]}'}, r"0 <= low <= high"),
        (
            {"rois": '{"Fe": [[1, 5], [9, 2]]}'},
            r"ROI window \[9, 2\] \(index \[1, 0\]\)",
        ),
        ({"rois": "Fe: 1-5"}, r"rois is not JSON \(Expecting value"),
        ({"rois": "[1, 5]"}, r"rois must be a JSON object"),
        (
            {"map_shape": "[0, 3]"},
            r"map_shape must be \[ny, nx\], both >= 1, got \[0, 3\]",
        ),
        ({"map_shape": "[4]"}, r"map_shape must be \[ny, nx\]"),
    ],
)
def test_bad_parameters_are_refused_by_name(
    values: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        MapParameters.parse(_given(**values))


def test_good_parameters_parse() -> None:
    p = MapParameters.parse(
        _given(rois='{"Fe": [625, 655], "Cu": [795, 815]}', map_shape="[3, 4]")
    )
    assert p.roi_names == ("Fe", "Cu")
    np.testing.assert_array_equal(p.windows, [[625, 655], [795, 815]])
    assert p.shape == (3, 4)


def test_windows_for_other_channels_give_an_error_result_not_a_crash() -> None:
    """Per-channel windows for 2 channels, frames of 4: each frame's result
    says why (the reducer counts it), and the worker goes on."""
    spectra = np.ones((4, 64), dtype=np.uint32)
    scalers = {
        "output_count_rate": 0.0, "all_events": 70, "all_good": 64,
        "clock_ticks": 80_000, "total_ticks": 80_000, "reset_ticks": 10,
        "event_width": 6, "dead_time_correction": 1.0,
    }  # fmt: skip
    assert tuple(scalers) == DEFAULT_SCALER_NAMES  # the stream's order
    metadata = {
        k: np.full(4, v, dtype=np.float64 if isinstance(v, float) else np.uint32)
        for k, v in scalers.items()
    }
    encoder = StreamEncoder()
    frame = make_frame(0, spectra, metadata, exptime=1e-3)
    (message,) = encoder.encode_frame(frame)  # multipart: one message
    parts = [bytes(part) for part in message]
    event = SimpleNamespace(
        event_number=7, streams={"xspress3": SimpleNamespace(frames=parts)}
    )
    worker = XrfMapWorker()
    parameters = _given(rois='{"Fe": [[1, 5], [2, 6]]}', map_shape="[1, 1]")
    result = worker.process_event(event, parameters)
    assert result is not None
    assert result["error"].startswith("frame 0: windows must be (rois, 2) or (4,")
