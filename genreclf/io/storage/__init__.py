"""Every location a user gives, a local path or a URL, read and written with pyarrow filesystems.

Local paths, ``file://``, ``s3://`` (pyarrow's S3: the standard AWS environment variables and
profile; the endpoint from ``[storage] endpoint_url``, else ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``), ``gs://``, ``hdfs://`` (where
libhdfs is installed) and, when ``fsspec`` and its backend are installed, any other fsspec protocol.
A *location* is what the tables hold: a plain absolute path for local files, a full URL otherwise.

Writes are "hidden, then commit": data goes to a name starting with ``.`` in the target's directory
(every reader here and in Spark skips it) and is moved into place when complete (:func:`atomic_output`,
the one commit helper). A file move is atomic on local disks and HDFS; on object stores it is a
server-side copy (the object appears whole) then a delete. A directory is replaced with the new one
in place before the old one is removed (:func:`replace_dir`). Outputs whose files must change
together (a featurize output, a score output) commit by one file move that names them.

Every move and delete under an output goes through :mod:`.filesystems`' ``_move`` / ``_delete``, where the crash
tests stop the driver just before or after the K-th one (``GENRECLF_KILL_AT``, :mod:`genreclf.io.killpoints`).

The one storage layer: every user location goes through this package's API, imported from here
(``from genreclf.io import storage``; ``storage.filesystem(...)``). Its modules, by concern:
:mod:`.settings` ([storage]), :mod:`.locations` (strings only), :mod:`.filesystems` (one per store,
single steps), :mod:`.failures` (errors in words), :mod:`.listing`, :mod:`.reading`,
:mod:`.writing` (the commit helpers) and :mod:`.transfers` (whole directories).
"""

from genreclf.io.storage.settings import (
    configure, ENDPOINT_VARIABLES, endpoint_url, options,
)
from genreclf.io.storage.locations import (
    is_url, is_local, to_url, to_location, join, parent, basename, resolve, relative, CREDENTIAL_VARIABLES,
    redact, refuse_credentials, sibling, hidden_name,
)
from genreclf.io.storage.filesystems import (
    Location, filesystem, located, info, exists, is_dir, is_file, delete, delete_files, list_dir,
)
from genreclf.io.storage.failures import (
    describe, NotARegularFile, no_space, writing,
)
from genreclf.io.storage.listing import (
    walk_files, has_magic, glob, probe,
)
from genreclf.io.storage.reading import (
    open_input, read_error, size_of, read_bytes, read_text, map_local,
)
from genreclf.io.storage.writing import (
    staged_leftovers, partial_files, atomic_output, write_bytes, write_text, write_direct, direct_output,
    create_exclusive, check_writable, replace_dir,
)
from genreclf.io.storage.transfers import (
    upload_dir, local_output, download, fetch_dir,
)

__all__ = [
    "configure", "ENDPOINT_VARIABLES", "endpoint_url", "options", "is_url", "is_local",
    "to_url", "to_location", "join", "parent", "basename", "resolve", "relative", "CREDENTIAL_VARIABLES",
    "redact", "refuse_credentials", "sibling", "hidden_name", "Location", "filesystem", "located", "info", "exists", "is_dir", "is_file",
    "delete", "delete_files", "list_dir", "describe", "NotARegularFile", "no_space", "writing", "walk_files",
    "has_magic", "glob", "probe", "open_input", "read_error", "size_of", "read_bytes", "read_text", "map_local",
    "staged_leftovers", "partial_files", "atomic_output", "write_bytes", "write_text", "write_direct",
    "direct_output", "create_exclusive", "check_writable", "replace_dir", "upload_dir", "local_output",
    "download", "fetch_dir",
]

# Settings files (--conf, conf/genreclf.toml) may be any location this layer reads; config sits below
# io and reads no URL itself, so the reader is lent to it here.
from genreclf.config import layers as _config_layers  # noqa: E402

_config_layers.use_reader(read_text)
