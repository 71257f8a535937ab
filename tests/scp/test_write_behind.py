"""The receivers' write-behind thread and the P-DATA-TF decode without copies (scp/write_behind.py, scp/pynetdicom_adapter.py)."""

from __future__ import annotations

import contextlib
import os
import struct

import pytest
from pynetdicom.pdu import P_DATA_TF

from scp.incoming import IncomingFiles, SpaceRules
from scp.pynetdicom_adapter import _decode_p_data_tf
from scp.write_behind import WriteBehind
from tests.support.node import tmpfs

MB = 1 << 20


@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_everything_queued_is_written_in_order(tmp_path, where):
    """Many pieces and write-back ranges, with sync_file_range on a disk and on tmpfs."""
    with tmpfs(tmp_path / "t", 32) if where == "tmpfs" else contextlib.nullcontext(tmp_path) as folder:
        path = folder / "f"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        try:
            os.write(fd, b"head")
            w = WriteBehind(fd, offset=4, max_pending=256 << 10, writeback_every=100_000)
            buf = bytearray(os.urandom(20 * MB + 123))
            expected = bytearray(b"head")
            for i in range(0, len(buf), 65_537):  # memoryviews, bytes and bytearrays alike
                piece = memoryview(buf)[i:i + 65_537]
                piece = bytes(piece) if i % 3 == 0 else piece
                assert w.put(piece)
                expected += piece
            assert w.drain() is None and w.written == len(expected) and w.pending == 0
            assert w.put(b"after the drain")
            expected += b"after the drain"
            assert w.drain() is None
            w.stop()
        finally:
            os.close(fd)
        assert path.read_bytes() == expected


def test_a_write_error_stops_the_writer_and_is_reported(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    fd = os.open(tmp_path / "f", os.O_RDONLY)  # every write fails (EBADF)
    try:
        w = WriteBehind(fd)
        w.put(b"x" * 1000)
        error = w.drain()
        assert error is not None and error.errno == 9
        assert not w.put(b"more")  # refused after the error
        w.stop()
    finally:
        os.close(fd)


def test_a_full_disk_behind_the_writer_discards_the_instance_by_close(tmp_path):
    with tmpfs(tmp_path / "small", 16) as folder:
        reg = IncomingFiles(SpaceRules(folder, reserve_bytes=0))
        f = reg.open("a")
        f.write_behind_from = 0  # the thread from the first byte
        f.write(b"\1" * MB)
        with open(folder / "other-writer", "wb") as other:  # fills the file system between two checks
            try:
                while True:
                    other.write(b"\0" * MB)
                    other.flush()
            except OSError:
                pass
        for _ in range(2):  # within CHECK_EVERY of the last statvfs: only the write itself can find the disk full
            f.write(b"\1" * MB)
        f.close()  # waits for the thread: the ENOSPC it met is the refusal
        assert f.discarding and f.refusal == "disk full while receiving" and f.reason == "no-space"
        assert f.written == 3 * MB
        assert sorted(p.name for p in folder.iterdir()) == ["other-writer"]
        (folder / "other-writer").unlink()
        g = reg.open("a")  # queued bytes count as used: refused from statvfs before ENOSPC
        g.write_behind_from = 0
        for _ in range(20):
            g.write(b"\3" * MB)
        g.close()
        assert g.discarding and g.refusal == "not enough free disk for the instance"
        assert reg.release("a") == 0 and not list(folder.iterdir())


def test_removing_a_file_while_its_writer_works_leaves_nothing(tmp_path):
    reg = IncomingFiles(SpaceRules(tmp_path, reserve_bytes=0))
    f = reg.open("assoc")
    f.write_behind_from = 0
    for _ in range(8):
        f.write(bytes(MB))
    assert reg.release("assoc") == 1  # the association ended: the thread is joined before the fd closes
    f.write(bytes(MB))  # a late write from the receiving thread is thrown away
    assert f.discarding and not list(tmp_path.iterdir())


def _pdv(context_id: int, header: int, payload: bytes) -> bytes:
    return struct.pack(">LBB", len(payload) + 2, context_id, header) + payload


class _Assoc:

    def get_handlers(self, event):
        return []


class _Dul:
    assoc = _Assoc()


def test_p_data_tf_is_decoded_into_views_of_the_received_body():
    body = bytearray(_pdv(1, 0x00, b"abc" * 1000) + _pdv(3, 0x02, b"end"))
    pdu, event = _decode_p_data_tf(_Dul(), bytearray(struct.pack(">BBL", 4, 0, len(body))), body)
    assert event == "Evt10" and isinstance(pdu, P_DATA_TF)
    primitive = pdu.to_primitive()
    assert [(cid, bytes(v)) for cid, v in primitive.presentation_data_value_list] == [
        (1, b"\x00" + b"abc" * 1000), (3, b"\x02end")]
    data = primitive.presentation_data_value_list[0][1]
    assert isinstance(data, memoryview) and data.obj is body  # no copy: what DIMSE writes is the received buffer


@pytest.mark.parametrize("body", [
    _pdv(1, 0, b"abc")[:-1],  # item longer than the PDU
    struct.pack(">LBB", 1, 1, 0),  # item length 1: no message control header (PS3.8 9.3.5.1, E.2)
    _pdv(1, 0, b"abc") + b"\0\0",  # a cut item header after the last item
])
def test_a_malformed_p_data_tf_is_refused(body):
    with pytest.raises(ValueError):
        _decode_p_data_tf(_Dul(), bytearray(6), bytearray(body))
