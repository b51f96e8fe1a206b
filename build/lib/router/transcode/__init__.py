"""Transfer syntax conversion: names, codec availability and streaming file conversion.

Pure conversion, no networking: :func:`convert_file` reads one DICOM file and
writes it in another transfer syntax, holding at most one frame in memory.
"""

from router.transcode.convert import ConversionResult, convert_file
from router.transcode.errors import ConversionError
from router.transcode.syntaxes import (
    TRANSFER_SYNTAX_NAMES,
    can_decode,
    can_encode,
    is_lossy,
    is_native,
    syntax_name,
    syntax_uid,
)

__all__ = [
    "TRANSFER_SYNTAX_NAMES",
    "ConversionError",
    "ConversionResult",
    "can_decode",
    "can_encode",
    "convert_file",
    "is_lossy",
    "is_native",
    "syntax_name",
    "syntax_uid",
]
