"""Static files as a product serves them: `collectstatic` into STATIC_ROOT with content-hashed names and .gz/.br
beside each (whitenoise's CompressedManifestStaticFilesStorage), run by `manage.py up` when a source changed."""

from __future__ import annotations

import hashlib
import os

from django.conf import settings
from django.contrib.staticfiles.finders import get_finders
from django.core.management import call_command
from whitenoise.storage import CompressedManifestStaticFilesStorage

# Files of the plotly package's data folder that no page loads (its Jupyter widget bundle, datasets, templates).
IGNORE = ["widgetbundle.js", "datasets", "templates", "*.map"]
STAMP = ".sources.sha256"


def _without_source_maps(patterns: tuple) -> tuple:
    def names_a_map(pattern) -> bool:
        return "sourceMappingURL" in (pattern[0] if isinstance(pattern, tuple | list) else pattern)

    return tuple((glob, tuple(p for p in found if not names_a_map(p))) for glob, found in patterns)


class StaticStorage(CompressedManifestStaticFilesStorage):
    """Hashed, compressed names once `collectstatic` has run; before that (a test session, a checkout that has not
    run `manage.py up`) a page names the plain file, which whitenoise serves from the source folders."""

    manifest_strict = False
    # Source maps are not collected (IGNORE), and a vendor file may name one its package does not ship (django-ninja's
    # swagger-ui.css names swagger-ui.css.map): their comments are left as they are, where rewriting them to hashed
    # names failed the whole collectstatic, and with it `manage.py up`.
    patterns = _without_source_maps(CompressedManifestStaticFilesStorage.patterns)

    def stored_name(self, name: str) -> str:
        try:
            return super().stored_name(name)
        except ValueError:  # not collected: the file is not in STATIC_ROOT to be hashed
            return name


def sources_fingerprint() -> str:
    """Path, size and modification time of every file the finders see, hashed."""
    digest = hashlib.sha256()
    for finder in get_finders():
        for path, storage in finder.list(IGNORE):
            stat = os.stat(storage.path(path))
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def collect_static(stdout=None) -> bool:
    """Collect and compress the static files unless STATIC_ROOT already holds these sources; True if it ran."""
    root = settings.STATIC_ROOT
    stamp = root / STAMP
    fingerprint = sources_fingerprint()
    if stamp.exists() and stamp.read_text() == fingerprint and (root / "staticfiles.json").exists():
        return False
    if stdout is not None:
        stdout.write("collecting and compressing static files (once per change of them)…")
    call_command("collectstatic", interactive=False, verbosity=0, ignore_patterns=IGNORE, clear=True)
    stamp.write_text(fingerprint)
    return True
