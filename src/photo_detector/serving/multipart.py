"""multipart/form-data → the file parts of one field, in memory, without copies beyond slicing.

Why not Starlette's form parser: it copies every part into a SpooledTemporaryFile that goes to disk above
1 MB, so a phone photo (3–5 MB) was written to and read back from /tmp on each request. The body is already
read and size-bounded, so parsing is a few `bytes.find` calls over it.
"""

from __future__ import annotations

import re

_BOUNDARY = re.compile(r'boundary="?([^";,]+)"?', re.IGNORECASE)
_NAME = re.compile(rb'\bname="([^"]*)"', re.IGNORECASE)


class MultipartError(ValueError):
    """The body is not well-formed multipart/form-data (the client's error)."""


def boundary_of(content_type: str) -> bytes:
    m = _BOUNDARY.search(content_type)
    if not m:
        raise MultipartError("the multipart Content-Type has no boundary")
    return m.group(1).encode("latin-1")


def file_parts(body: bytes, content_type: str, field: str, max_parts: int) -> list[bytes]:
    """The contents of the parts named `field` that are file uploads (carry a filename).

    A part named `field` without a filename is a text field: MultipartError says so. More than `max_parts`
    parts in all is refused before any is copied."""
    delimiter = b"--" + boundary_of(content_type)
    pos = body.find(delimiter)
    if pos < 0:
        raise MultipartError("the body holds no part delimited by the declared boundary")
    out: list[bytes] = []
    parts = 0
    wanted = field.encode("latin-1")
    while True:
        pos += len(delimiter)
        if body.startswith(b"--", pos):
            return out  # the closing delimiter
        if not body.startswith(b"\r\n", pos):
            raise MultipartError("a boundary is not followed by a line break")
        head_end = body.find(b"\r\n\r\n", pos + 2)
        if head_end < 0:
            raise MultipartError("a part's headers never end")
        end = body.find(b"\r\n" + delimiter, head_end + 4)
        if end < 0:
            raise MultipartError("a part is never closed by the boundary")
        parts += 1
        if parts > max_parts:
            raise MultipartError(f"more than {max_parts} parts")
        headers = body[pos + 2:head_end]
        disposition = next((line for line in headers.split(b"\r\n")
                            if line.lower().startswith(b"content-disposition:")), b"")
        name = _NAME.search(disposition)
        if name and name.group(1) == wanted:
            if b"filename=" not in disposition.lower():
                raise MultipartError(f"the '{field}' field must be a file upload")
            out.append(body[head_end + 4:end])
        pos = end + 2
