"""Reading a data source: JSONL with a text field, plain text (a document per line) or Parquet.

A datatrove reader (BaseDiskReader: fsspec folders, file listing and sharding across tasks) whose `read_file`
is strict: datatrove's JsonlReader logs a malformed line and goes on, but a prep job must stop and say where
the source is broken, so a line that is not a JSON object with a string text field, text that is not UTF-8, or
an unreadable Parquet file raises MalformedSource with the file and line.
"""

from __future__ import annotations

import orjson
from datatrove.pipeline.readers.base import BaseDiskReader

from jobs.data.prep.spec import SourceSpec


class MalformedSource(Exception):
    """A source file the job cannot read; names the source, the file and the line (1-based; 0: the whole file)."""

    def __init__(self, source: str, path: str, line: int, reason: str):
        where = f"{path} line {line}" if line else path
        super().__init__(f"source {source}: {where}: {reason}")
        self.source, self.path, self.line, self.reason = source, path, line, reason

    def __reduce__(self):
        return MalformedSource, (self.source, self.path, self.line, self.reason)

    def to_json(self) -> dict:
        return {"message": str(self), "source": self.source, "path": self.path, "line": self.line}


class SourceReader(BaseDiskReader):
    name = "source reader"

    def __init__(self, source: SourceSpec, index: int = 0, limit: int = -1):
        folder, glob = source.folder_and_glob()
        super().__init__(
            folder,
            glob_pattern=glob,
            recursive=glob is None or "**" in glob,
            text_key=source.text_field,
            default_metadata={"source": source.name, "tag": source.language},
            add_file_path=False,
            limit=limit,
        )
        self.source = source
        self.index = index  # the source's place in the recipe: first part of each document's order key
        self._stride, self._offset, self._line = 1, 0, 0
        self._file_index: dict[str, int] = {}

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        """datatrove's file sharding (task i reads files i, i+N, ...), except that a source of fewer files than
        tasks is shared line by line (task i keeps lines i, i+N, ... of every file): one large file still
        keeps every task busy. Lines are skipped before they are decoded, so each task parses only its own."""
        if data:
            yield from data
        files = self.data_folder.list_files(recursive=self.recursive, glob_pattern=self.glob_pattern)
        if not files:
            raise MalformedSource(self.source.name, self.source.path, 0, "no files match this path")
        self._file_index = {path: i for i, path in enumerate(files)}
        if len(files) >= world_size:
            shard, self._stride, self._offset = files[rank::world_size], 1, 0
        else:
            shard, self._stride, self._offset = files, world_size, rank
        self._line = 0
        for doc in self.read_files_shard(shard):
            self.update_doc_stats(doc)
            yield doc

    def _mine(self) -> bool:
        """Whether the next line (counted across the shard's files) belongs to this task."""
        line = self._line
        self._line += 1
        return line % self._stride == self._offset

    def _where(self, filepath: str) -> str:
        return self.data_folder.resolve_paths(filepath)

    def _document(self, text: str, filepath: str, line: int):
        """A document with its id (file:line) and `order` (source, file, line): the same key whatever the number of
        tasks, which deduplication sorts on to keep the first of each group."""
        record = {self.text_key: text, self.id_key: f"{filepath}:{line}"}
        document = self.get_document_from_dict(record, filepath, line)
        if document is not None:
            document.metadata["order"] = [self.index, self._file_index.get(filepath, 0), line]
        return document

    def read_file(self, filepath: str):
        if self.source.format == "parquet":
            yield from self._read_parquet(filepath)
            return
        with self.data_folder.open(filepath, "rb", compression="infer") as fh:
            for number, raw in enumerate(fh, start=1):
                if not self._mine():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise MalformedSource(
                        self.source.name, self._where(filepath), number, f"not UTF-8 ({exc})"
                    ) from None
                if self.source.format == "text":
                    text = line.rstrip("\r\n")
                else:
                    text = self._json_text(line, filepath, number)
                if text and text.strip():
                    document = self._document(text, filepath, number)
                    if document is not None:
                        yield document

    def _json_text(self, line: str, filepath: str, number: int) -> str | None:
        if not line.strip():
            return None
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise MalformedSource(self.source.name, self._where(filepath), number, f"not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise MalformedSource(self.source.name, self._where(filepath), number, "not a JSON object")
        text = record.get(self.source.text_field)
        if not isinstance(text, str):
            found = "missing" if text is None else f"a {type(text).__name__}"
            raise MalformedSource(
                self.source.name,
                self._where(filepath),
                number,
                f"the text field {self.source.text_field!r} is {found}, not a string",
            )
        return text

    def _read_parquet(self, filepath: str):
        import pyarrow as pa
        import pyarrow.parquet as pq

        with self.data_folder.open(filepath, "rb") as fh:
            try:
                parquet = pq.ParquetFile(fh)
                if self.source.text_field not in parquet.schema_arrow.names:
                    raise MalformedSource(
                        self.source.name,
                        self._where(filepath),
                        0,
                        f"no column {self.source.text_field!r} (columns: {', '.join(parquet.schema_arrow.names)})",
                    )
                row = 0
                for batch in parquet.iter_batches(columns=[self.source.text_field], batch_size=1024):
                    for text in batch.column(0).to_pylist():
                        row += 1
                        if not self._mine():
                            continue
                        if text is not None and not isinstance(text, str):
                            raise MalformedSource(
                                self.source.name, self._where(filepath), row, "the text column is not a string"
                            )
                        if text and text.strip():
                            document = self._document(text, filepath, row)
                            if document is not None:
                                yield document
            except (pa.ArrowException, OSError) as exc:
                raise MalformedSource(
                    self.source.name, self._where(filepath), 0, f"not a readable Parquet file ({exc})"
                ) from None
