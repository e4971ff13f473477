"""Sans-IO protocol core for the Xspress3 ZeroMQ stream.

Imports no zmq, asyncio or ophyd: bytes in, typed packets out (and back).
"""

from ._decoder import (
    MAX_BINS,
    MAX_CHANNELS,
    MAX_FRAME_BYTES,
    Packet,
    StreamDecoder,
    parse_json_part,
    validate_image,
)
from ._encoder import Message, StreamEncoder, make_frame
from ._errors import (
    BufferLengthError,
    InvalidJSONError,
    MissingPartError,
    OutOfSeriesError,
    ProtocolError,
    ShapeTooLargeError,
    UnknownHtypeError,
    UnsafeMetadataError,
    UnsupportedEncodingError,
)
from ._frame import Frame, Framing
from ._metadata import (
    MAX_METADATA_BYTES,
    MetadataDecoder,
    decode_metadata,
    encode_metadata,
)
from ._models import (
    DEFAULT_SCALER_NAMES,
    HeaderMessage,
    ImageMessage,
    JsonMessage,
    RoiWindow,
    RoiWindows,
    SeriesEndMessage,
)
from ._physics import (
    CLOCK_HZ,
    DeadTime,
    DeadTimeWarning,
    correct,
    dead_time,
    dead_time_from_scalers,
    roi_sums,
    stream_ocr_as_rate,
)
from ._series import (
    Anomaly,
    AnomalyKind,
    FrameSet,
    SeriesState,
    SeriesTracker,
    format_ranges,
)

__all__ = [
    "CLOCK_HZ",
    "DEFAULT_SCALER_NAMES",
    "MAX_BINS",
    "MAX_CHANNELS",
    "MAX_FRAME_BYTES",
    "MAX_METADATA_BYTES",
    "Anomaly",
    "AnomalyKind",
    "BufferLengthError",
    "DeadTime",
    "DeadTimeWarning",
    "Frame",
    "FrameSet",
    "Framing",
    "HeaderMessage",
    "ImageMessage",
    "InvalidJSONError",
    "JsonMessage",
    "Message",
    "MetadataDecoder",
    "MissingPartError",
    "OutOfSeriesError",
    "Packet",
    "ProtocolError",
    "RoiWindow",
    "RoiWindows",
    "SeriesEndMessage",
    "SeriesState",
    "SeriesTracker",
    "ShapeTooLargeError",
    "StreamDecoder",
    "StreamEncoder",
    "UnknownHtypeError",
    "UnsafeMetadataError",
    "UnsupportedEncodingError",
    "correct",
    "dead_time",
    "dead_time_from_scalers",
    "decode_metadata",
    "encode_metadata",
    "format_ranges",
    "make_frame",
    "parse_json_part",
    "roi_sums",
    "stream_ocr_as_rate",
    "validate_image",
]
