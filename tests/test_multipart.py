"""The service's in-memory multipart parser on bodies real clients encode, and on broken ones."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from photo_detector.serving.multipart import MultipartError, file_parts


def encoded(files: list[tuple[str, bytes]], data: dict[str, str] | None = None) -> tuple[bytes, str]:
    """The body and Content-Type httpx sends (the same encoder as the tests' and users' clients)."""
    req = httpx.Request("POST", "http://x/", files=[(name, (f"{i}.jpg", blob)) for i, (name, blob) in
                                                    enumerate(files)], data=data)
    return req.read(), req.headers["content-type"]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["file", "files", "other"]), st.binary(max_size=3000)), min_size=1,
                max_size=5))
def test_parts_come_back_byte_for_byte(parts: list[tuple[str, bytes]]) -> None:
    body, ctype = encoded(parts, {"note": "a text field"})
    for field in ("file", "files", "other"):
        assert file_parts(body, ctype, field, max_parts=10) == [b for n, b in parts if n == field]


def test_quoted_boundary_and_a_preamble() -> None:
    body = (b"preamble to ignore\r\n--abc\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
            b"Content-Type: image/png\r\n\r\nPIXELS\r\n--abc--\r\n")
    assert file_parts(body, 'multipart/form-data; boundary="abc"', "file", 4) == [b"PIXELS"]


@pytest.mark.parametrize(("body", "ctype", "message"), [
    (b"--abc\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\ntext\r\n--abc--", "b=abc",
     "has no boundary"),
    (b"no delimiter here", "multipart/form-data; boundary=abc", "no part delimited"),
    (b"--abc\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\ntext\r\n--abc--",
     "multipart/form-data; boundary=abc", "must be a file upload"),
    (b"--abc\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\nunterminated",
     "multipart/form-data; boundary=abc", "never closed"),
    (b"--abc\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"", "multipart/form-data; boundary=abc",
     "headers never end"),
    (b"--abcX", "multipart/form-data; boundary=abc", "not followed by a line break"),
])
def test_broken_bodies_are_named(body: bytes, ctype: str, message: str) -> None:
    with pytest.raises(MultipartError, match=message):
        file_parts(body, ctype, "file", 4)


def test_too_many_parts_are_refused_before_copying() -> None:
    body, ctype = encoded([("files", b"x")] * 6)
    with pytest.raises(MultipartError, match="more than 5 parts"):
        file_parts(body, ctype, "files", 5)
