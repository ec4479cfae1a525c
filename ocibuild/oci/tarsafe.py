"""Reading tar headers from untrusted input without unbounded memory.

``tarfile`` buffers a pax or GNU long-name header of any declared length and follows a GNU sparse map for as long
as it says another block follows; in a compressed layer a few MB can declare gigabytes. ``BoundedTarInfo`` (passed
as ``tarinfo=`` to ``tarfile.open``) refuses both past fixed limits. Used by every reader of foreign tars: base
layers (``rootfs.layers``) and image archives (``oci.archive``).
"""

from __future__ import annotations

import tarfile

MAX_EXTENDED_HEADER = 1 << 20
MAX_SPARSE_BLOCKS = 1024


class BoundedTarInfo(tarfile.TarInfo):
    """A tar header that refuses to buffer a huge extended header or sparse map (``tarfile`` reads a pax header of
    any declared length into memory at once; in a compressed layer a few MB of blob can declare gigabytes)."""

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        # tarfile takes a header cut short after the first member for the end of the archive; Docker's Go reader
        # (and GNU tar) call it an unexpected EOF, and so do we, rather than build on a layer no engine can unpack.
        if 0 < len(buf) < tarfile.BLOCKSIZE:
            raise tarfile.SubsequentHeaderError("a header cut short: the layer is truncated")
        return super().frombuf(buf, encoding, errors)

    def _proc_member(self, tar):  # the hook tarfile gives TarInfo subclasses for each header it reads
        extended = (
            tarfile.GNUTYPE_LONGNAME,
            tarfile.GNUTYPE_LONGLINK,
            tarfile.XHDTYPE,
            tarfile.XGLTYPE,
            tarfile.SOLARIS_XHDTYPE,
        )
        if self.type in extended and self.size > MAX_EXTENDED_HEADER:
            raise tarfile.SubsequentHeaderError(
                f"an extended header of {self.size} bytes, over the {MAX_EXTENDED_HEADER} byte limit"
            )
        return super()._proc_member(tar)

    def _proc_sparse(self, tar):
        # tarfile's own loop reads extension blocks for as long as they say another follows, and fails with an
        # IndexError on a truncated one; this is the same loop, bounded.
        structs, isextended, origsize = self._sparse_structs
        del self._sparse_structs
        blocks = 0
        while isextended:
            buf = tar.fileobj.read(tarfile.BLOCKSIZE)
            blocks += 1
            if len(buf) != tarfile.BLOCKSIZE or blocks > MAX_SPARSE_BLOCKS:
                raise tarfile.SubsequentHeaderError("a truncated or oversized GNU sparse map")
            for pos in range(0, 21 * 24, 24):
                try:
                    offset = tarfile.nti(buf[pos : pos + 12])
                    numbytes = tarfile.nti(buf[pos + 12 : pos + 24])
                except ValueError:
                    break
                if offset and numbytes:
                    structs.append((offset, numbytes))
            isextended = bool(buf[504])
        self.sparse = structs
        self.offset_data = tar.fileobj.tell()
        tar.offset = self.offset_data + self._block(self.size)
        self.size = origsize
        return self
