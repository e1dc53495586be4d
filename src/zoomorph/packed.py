"""Opening a packed model file (NAME.zoomorph): checked against its manifest, read from a cache folder.

A packed file is a zip of flat members (config.json, model.safetensors, ...) and manifest.json, which
gives the sha256 and size of every other member. `open_packed` refuses a file whose members do not match
their manifest (one changed, added or missing), then extracts it once into a cache folder named by the
file's own sha256 and returns that folder, which `runs.Run.open` reads like a run folder. Nothing in a
packed file is unpickled: the weights are safetensors, the rest JSON, Markdown, CSV and ONNX.

What commands derive from a packed file (metrics, predictions, a refreshed card, a report, graphs) goes
beside it, into NAME.outputs/ (`outputs_dir`), never into the cache. zoomorph.pack writes packed files;
this module only reads them (runs.py imports it, so it imports no other zoomorph module but errors).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from zoomorph.errors import InputNotFound, ZoomorphError

SUFFIX = ".zoomorph"
MANIFEST = "manifest.json"
MAX_MANIFEST = 1 << 20  # bytes: a manifest lists a dozen members; more is no manifest of ours (a zip bomb)
FORMAT, FORMAT_VERSION = "zoomorph-packed-model", 1
# members are plain file names: nothing a zip could use to write outside the cache folder
_MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class PackedFileError(ZoomorphError):
    """A packed model file is damaged or was changed after packing: the message names the file and member."""


def is_packed(path: str | Path) -> bool:
    """Whether `path` names a packed model file (by its suffix; a folder of that name is a run folder)."""
    return Path(path).suffix == SUFFIX and not Path(path).is_dir()


def outputs_dir(packed: Path) -> Path:
    """Where commands write what they derive from a packed file: NAME.zoomorph -> NAME.outputs/ beside it."""
    return Path(packed).with_suffix(".outputs")


def cache_root() -> Path:
    """$ZOOMORPH_CACHE, else $XDG_CACHE_HOME/zoomorph, else ~/.cache/zoomorph."""
    if os.environ.get("ZOOMORPH_CACHE"):
        return Path(os.environ["ZOOMORPH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zoomorph"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_packed(path: str | Path) -> Path:
    """Check the packed file against its manifest; the read-only cache folder holding its members.

    The cache is keyed by the file's sha256 and compared with the file's members at every open, so a
    cache changed on disk is extracted again rather than trusted."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"{path}: no such file (a packed model, NAME{SUFFIX}, from `zoomorph pack`)")
    data = path.read_bytes()
    members = checked_members(path, data)
    folder = cache_root() / "packed" / sha256(data)
    if not _holds(folder, members):
        try:
            _extract(members, folder)
        except OSError as err:
            raise PackedFileError(f"{path}: cannot unpack it into {folder.parent} ({err}); set ZOOMORPH_CACHE "
                                  "to a folder you can write") from None
    return folder


def _read_manifest_bytes(archive: zipfile.ZipFile) -> bytes:
    """The manifest, read no further than MAX_MANIFEST: more comes back as no JSON (refused as damaged)."""
    with archive.open(MANIFEST) as member:
        data = member.read(MAX_MANIFEST + 1)
    return data if len(data) <= MAX_MANIFEST else b""


def read_manifest(path: Path, archive: zipfile.ZipFile) -> dict:
    """The manifest's members, {name: {"sha256", "size"}}, checked for form."""
    try:
        manifest = json.loads(_read_manifest_bytes(archive))
        listed = manifest["members"]
        ok = manifest.get("format") == FORMAT and all(
            isinstance(e["sha256"], str) and isinstance(e["size"], int) for e in listed.values())
    except KeyError:
        raise PackedFileError(f"{path}: no {MANIFEST}, or one without its members: not a packed zoomorph "
                              "model, or a damaged one") from None
    except (ValueError, TypeError, AttributeError):
        raise PackedFileError(f"{path}: its {MANIFEST} is damaged (not the manifest `zoomorph pack` writes)") \
            from None
    if not ok:
        raise PackedFileError(f"{path}: its {MANIFEST} is not a {FORMAT} manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise PackedFileError(f"{path} was packed in format {manifest['format_version']}, newer than this "
                              f"zoomorph reads ({FORMAT_VERSION}): upgrade zoomorph")
    return listed


def checked_members(path: Path, data: bytes) -> dict[str, bytes]:
    """Every member's bytes (the manifest's too), after checking each against the manifest; PackedFileError
    naming the member that was changed, added or is missing."""
    refuse = "refused: get the file again from whoever packed it"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
            if len(set(names)) != len(names):
                raise PackedFileError(f"{path}: a member appears twice (added after packing); {refuse}")
            listed = read_manifest(path, archive)
            for name in names:
                if name != MANIFEST and name not in listed:
                    raise PackedFileError(f"{path}: member {name!r} is not in its manifest (added after "
                                          f"packing); {refuse}")
            members = {MANIFEST: _read_manifest_bytes(archive)}
            for name, entry in listed.items():
                if not _MEMBER_NAME.match(name) or name == MANIFEST:
                    raise PackedFileError(f"{path}: its manifest lists {name!r}, not a member name; {refuse}")
                if name not in names:
                    raise PackedFileError(f"{path}: member {name!r} is missing (its manifest lists it); {refuse}")
                members[name] = _read(path, archive, name, entry)
    except zipfile.BadZipFile as err:
        raise PackedFileError(f"{path}: not a readable packed model ({err}); {refuse}") from None
    return members


def _read(path: Path, archive: zipfile.ZipFile, name: str, entry: dict) -> bytes:
    """A member's bytes, read no further than the size the manifest gives (a zip bomb stops there)."""
    changed = PackedFileError(f"{path}: member {name!r} does not match the sha256 its manifest gives (changed "
                              "after packing, or damaged); refused: get the file again from whoever packed it")
    try:
        with archive.open(name) as member:
            data = member.read(entry["size"] + 1)
    except zipfile.BadZipFile:  # a CRC error: the bytes changed inside the zip
        raise changed from None
    if len(data) != entry["size"] or sha256(data) != entry["sha256"]:
        raise changed
    return data


def _holds(folder: Path, members: dict[str, bytes]) -> bool:
    """The cache folder holds exactly these members, byte for byte."""
    if not folder.is_dir() or {p.name for p in folder.iterdir()} != set(members):
        return False
    return all((folder / name).read_bytes() == data for name, data in members.items())


def _extract(members: dict[str, bytes], folder: Path) -> None:
    """Write the members into a new folder beside `folder`, make it read-only, then rename it into place,
    so that a reader sees a whole cache or none (a second process opening the same file at once too)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name[:16]}-"))
    for name, data in members.items():
        (tmp / name).write_bytes(data)
        (tmp / name).chmod(0o444)
    tmp.chmod(0o555)
    if folder.exists():  # a cache that no longer matches its file
        _remove(folder)
    try:
        tmp.rename(folder)
    except OSError:  # another process renamed its copy first
        _remove(tmp)
        if not _holds(folder, members):
            raise


def _remove(folder: Path) -> None:
    folder.chmod(0o755)  # its files can go once the folder itself is writable
    shutil.rmtree(folder)
