"""The Store: every read and write of Exemplar's SQLite database goes through here.

Rows come back as plain dicts with JSON columns already decoded, so callers
never see SQL or serialised strings.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils import Database
from sqlite_utils.db import Table

from storage.errors import ConflictError, NotFoundError, ValidationError, file_full_message, refuse_when_full
from storage.examples import (
    MAX_OUTPUT_CHARS,
    check_choice,
    input_key,
    keep_last_turns,
    normalise_text,
    split_for,
    validate_messages,
    validate_output,
)
from storage.migrations import migrations
from storage.processes import pid_alive
from storage.search import query_words, rank
from storage.text import check_score, check_tags, check_text
from storage.vocabulary import (
    ACTIVE_JOB_STATUSES,
    REVIEW_STATUSES,
    Actor,
    ExampleSource,
    ExampleStatus,
    JobStatus,
    Rating,
    Role,
    Split,
    VersionStatus,
)

MAX_RATED_IDS = 500  # a chat's answers; bounds the placeholders in one query

# Columns holding JSON. sqlite-utils encodes dicts and lists on insert and update; _decode reads them back.
# An import's rows go in this many at a time, each chunk one short transaction, so
# chat waits for a chunk at most, never for the whole import.
IMPORT_CHUNK_ROWS = 500
# The status of an imported row until its whole import is in (never shown by a query).
IMPORTING = "importing"

_JSON_COLUMNS = {
    "messages": ("context", "gen_params", "few_shot_ids", "related_ids"),
    "examples": ("input",),
    "model_versions": ("metrics", "example_ids", "train_config"),
    "jobs": ("params", "progress", "losses", "metrics"),
    "feedback": ("tags",),
}



@dataclass(frozen=True)
class ImportReport:
    """What an import did: the new rows' ids, the stored examples their outputs replaced (now
    superseded, kept as history), and how many rows asked a question no stored example had."""

    ids: list[int]
    replaced: list[int]
    new: int

    @property
    def same_question(self) -> int:
        """Rows whose question a stored example already had (replaced or not)."""
        return len(self.ids) - self.new


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _add_filters(clauses: list[str], params: list[Any], filters: dict[str, Any]) -> None:
    """Append each `clause` (one ? placeholder) whose value is given, and its value."""
    for clause, value in filters.items():
        if value:
            clauses.append(clause)
            params.append(value)


def now() -> str:
    """The current UTC time as an ISO 8601 string (sortable as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _new_id(table: Table) -> int:
    """The id of the row `table` just inserted (sqlite-utils' last_pk, which is None only when nothing was)."""
    if table.last_pk is None:
        raise RuntimeError(f"no row was inserted into {table.name}")
    return int(table.last_pk)


class Store:
    """Exemplar's database. Thread-safe: one connection guarded by a lock.

    Every write runs inside `_write()`: the lock is held for the whole
    transaction, so concurrent requests can never commit or roll back each
    other's work, and a method that returns has committed its rows.
    """

    max_output_chars = MAX_OUTPUT_CHARS

    def __init__(self, path: str | Path = ":memory:"):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self.db = Database(conn)
        self._lock = threading.RLock()
        if self.path != ":memory:":
            self.db.enable_wal()
        # FULL: a commit is on disk (the WAL fsynced) before the method returns,
        # so an acknowledged write survives a crash of the process or the machine.
        self.db.execute("PRAGMA synchronous = FULL")
        self.db.execute("PRAGMA foreign_keys = ON")
        # Other processes (the training worker, the CLI) write to the same file.
        self.db.execute("PRAGMA busy_timeout = 30000")
        with self._lock, refuse_when_full():
            migrations.apply(self.db)
        self._drop_abandoned_imports()

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def integrity_check(self) -> str:
        """SQLite's own check of the file: 'ok', or the problems it found."""
        with self._lock:
            return "\n".join(row[0] for row in self.db.execute("PRAGMA integrity_check").fetchall())

    def backup(self, dest: str | Path) -> None:
        """Write a consistent copy of the database to the new file `dest` (SQLite's backup API),
        while other requests and processes keep writing; the copy is checked before it is kept."""
        dest = Path(dest)
        if dest.exists():
            raise ConflictError(f"{dest} already exists: back up to a new place")
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{dest.name}.part")
        part.unlink(missing_ok=True)
        target = sqlite3.connect(part)
        try:
            # One step, so the copy is one snapshot; WAL lets other processes write meanwhile.
            with self._lock, refuse_when_full(file_full_message(dest)):
                self.db.conn.backup(target)
            # A single file, readable without its -wal: the copy leaves WAL mode.
            target.execute("PRAGMA journal_mode = DELETE")
            problems = "\n".join(row[0] for row in target.execute("PRAGMA integrity_check").fetchall())
            if problems != "ok":
                raise ConflictError(f"the copy of the database failed SQLite's integrity check: {problems}")
        except BaseException:
            target.close()
            part.unlink(missing_ok=True)
            raise
        target.close()
        os.replace(part, dest)

    # -- helpers -------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One transaction under the lock: committed when the block ends, rolled back on any error.

        Nested blocks (one Store method calling another) become savepoints of the
        outer transaction. BEGIN IMMEDIATE takes SQLite's write lock at the start,
        so a read-then-write never meets another process's commit halfway (which
        SQLite answers with "database is locked" at once, without waiting).
        A full disk (SQLITE_FULL) rolls the transaction back and raises StorageFullError: nothing
        half-written stays, and the next write succeeds once there is space again.
        """
        with self._lock, refuse_when_full():
            conn = self.db.conn
            if conn.in_transaction:
                with self.db.atomic():
                    yield
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _decode(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        for column in _JSON_COLUMNS.get(table, ()):
            if row.get(column) is not None:
                row[column] = json.loads(row[column])
        return row

    def _get(self, table: str, pk: Any, what: str) -> dict[str, Any]:
        with self._lock:
            try:
                row = self.db.table(table).get(pk)
            except sqlite_utils.db.NotFoundError:
                raise NotFoundError(f"{what} {pk} does not exist") from None
        return self._decode(table, row)

    # -- conversations and messages ------------------------------------------

    def create_conversation(self, source: str = "ui", system_prompt: str | None = None) -> int:
        """Start a conversation and return its id."""
        with self._write():
            return _new_id(self.db.table("conversations").insert(
                {"created_at": now(), "source": source, "system_prompt": system_prompt}
            ))

    def get_conversation(self, conversation_id: int) -> dict[str, Any]:
        return self._get("conversations", conversation_id, "Conversation")

    def count_conversations(self) -> int:
        with self._lock:
            return self.db.execute("select count(*) from conversations").fetchone()[0]

    def count_messages(self) -> int:
        with self._lock:
            return self.db.execute("select count(*) from messages").fetchone()[0]

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        *,
        context: list[dict[str, str]] | None = None,
        model_version: str | None = None,
        gen_params: dict[str, Any] | None = None,
        few_shot_ids: list[int] | None = None,
    ) -> int:
        """Store one turn; assistant turns carry the context they answered and how."""
        check_choice("role", role, Role)
        row = {
            "conversation_id": conversation_id,
            "role": role,
            "content": content,
            "context": context,
            "model_version": model_version,
            "gen_params": gen_params,
            "few_shot_ids": few_shot_ids,
            "created_at": now(),
        }
        with self._write():
            self._get("conversations", conversation_id, "Conversation")
            return _new_id(self.db.table("messages").insert(row))

    def get_message(self, message_id: int) -> dict[str, Any]:
        return self._get("messages", message_id, "Message")

    def update_message(self, message_id: int, **fields: Any) -> None:
        """Fill in a turn stored before its text was known (content, model_version, gen_params, few_shot_ids,
        and the answer's kind: from_example, related_ids)."""
        allowed = {"content", "model_version", "gen_params", "few_shot_ids", "from_example", "related_ids"}
        if not fields or set(fields) - allowed:
            raise ValidationError(f"update_message changes only {', '.join(sorted(allowed))}")
        with self._write():
            self._get("messages", message_id, "Message")
            self.db.table("messages").update(message_id, fields)

    def delete_message(self, message_id: int) -> bool:
        """Remove a turn that never got an answer (generation failed), unless feedback already
        points at it; return whether it was removed."""
        with self._write():
            if self.db.execute("select 1 from feedback where message_id = ?", [message_id]).fetchone():
                return False
            self.db.execute("delete from messages where id = ?", [message_id])
            return True

    def discard_turn(self, message_ids: Sequence[int], *, conversation_id: int | None = None) -> None:
        """Remove the rows stored for an answer that never started: its turns and, when
        `conversation_id` is given and the conversation is left empty, the conversation."""
        with self._lock, refuse_when_full(), self.db.atomic():
            for message_id in message_ids:
                self.db.execute("delete from messages where id = ?", [message_id])
            if conversation_id is not None and not self.db.execute(
                "select 1 from messages where conversation_id = ?", [conversation_id]
            ).fetchone():
                self.db.execute("delete from conversations where id = ?", [conversation_id])

    def conversation_messages(self, conversation_id: int) -> list[dict[str, Any]]:
        with self._lock:
            rows = self.db.table("messages").rows_where("conversation_id = ?", [conversation_id], order_by="id")
            return [self._decode("messages", r) for r in rows]

    # -- feedback ------------------------------------------------------------

    def add_feedback(
        self,
        message_id: int,
        *,
        rating: str | None,
        reason: str | None = None,
        comment: str | None = None,
        correction: str | None = None,
        example_id: int | None = None,
        actor: str | None = None,
        rater: str | None = None,
        tags: Sequence[str] | None = None,
        score: int | None = None,
    ) -> int:
        """Record a rating (or un-rating, rating=None) and/or a correction of an assistant message."""
        if rating is not None:
            check_choice("rating", rating, Rating)
        for name, value in (("reason", reason), ("comment", comment), ("correction", correction)):
            if value is not None:
                check_text(value, name)
        tags, score = check_tags(tags), check_score(score)
        with self._write():
            message = self.get_message(message_id)
            if message["role"] != "assistant":
                raise ValidationError(f"Message {message_id} is not an assistant answer")
            return _new_id(self.db.table("feedback").insert(
                {
                    "message_id": message_id,
                    "rating": rating,
                    "reason": reason,
                    "comment": comment,
                    "correction": correction,
                    "example_id": example_id,
                    "actor": actor,
                    "rater": rater,
                    "tags": tags,
                    "score": score,
                    "created_at": now(),
                }
            ))

    def get_feedback(self, feedback_id: int) -> dict[str, Any]:
        return self._get("feedback", feedback_id, "Feedback")

    def message_feedback(self, message_id: int) -> list[dict[str, Any]]:
        with self._lock:
            rows = list(self.db.table("feedback").rows_where("message_id = ?", [message_id], order_by="id"))
        return [self._decode("feedback", row) for row in rows]

    def current_rating(self, message_id: int, rater: str | None) -> dict[str, Any] | None:
        """A rater's latest rating of an answer (corrections aside), or None if never rated."""
        return self.current_ratings([message_id], rater).get(message_id)

    def current_ratings(self, message_ids: Sequence[int], rater: str | None) -> dict[int, dict[str, Any]]:
        """Each answer's latest rating by one rater (a row whose rating may be null: un-rated)."""
        ids, marks = _id_marks(message_ids)
        if not ids:
            return {}
        with self._lock:
            rows = self.db.execute(
                f"""select * from feedback where id in (
                      select max(id) from feedback
                      where message_id in ({marks}) and rater is ? and correction is null
                      group by message_id)""",
                [*ids, rater],
            ).fetchall()
            columns = [c.name for c in self.db.table("feedback").columns]
        return {row[columns.index("message_id")]: self._decode("feedback", dict(zip(columns, row))) for row in rows}

    # -- front ends that name answers and ratings with their own ids (Open WebUI) --------------

    def link_message(
        self, source: str, external_id: str, message_id: int, *, chat_id: str | None = None, user_id: str | None = None
    ) -> None:
        """Remember that `source` calls the stored answer `message_id` by `external_id`. The first link
        of an id stands: an id sent again (the front end continued an answer) rates the answer it named first."""
        with self._write():
            self._get("messages", message_id, "Message")
            self.db.table("linked_messages").insert(
                {"source": source, "external_id": external_id, "message_id": message_id, "chat_id": chat_id,
                 "user_id": user_id, "created_at": now()},
                pk=("source", "external_id"), ignore=True,
            )

    def linked_message(self, source: str, external_id: str) -> int | None:
        """The stored answer that `source` calls `external_id`, or None."""
        with self._lock:
            row = self.db.execute(
                "select message_id from linked_messages where source = ? and external_id = ?", [source, external_id]
            ).fetchone()
        return row[0] if row else None

    def record_linked_feedback(
        self,
        source: str,
        external_id: str,
        message_external_id: str,
        *,
        updated_at: int,
        rater: str,
        status: str,
        rating: str | None,
        reason: str | None = None,
        comment: str | None = None,
        tags: Sequence[str] | None = None,
        score: int | None = None,
    ) -> dict[str, Any]:
        """A rating made in `source` (its id `external_id`, its answer `message_external_id`), stored as
        record_feedback stores any rating, by `rater`. Sent again, or late (`updated_at` older than the
        one stored), it changes nothing: a front end that resends after a restart duplicates nothing.
        NotFoundError when the answer is not one stored here; the id is then remembered as such, so
        that a sync does not ask for it again until it changes."""
        with self._write():
            linked = self.db.execute(
                "select message_id, updated_at, feedback_id from linked_feedback where source = ? and external_id = ?",
                [source, external_id],
            ).fetchone()
            message_id = self.linked_message(source, message_external_id)
            row = {"source": source, "external_id": external_id, "message_id": message_id, "rater": rater,
                   "updated_at": updated_at, "created_at": now()}
            if message_id is None:  # remembered (committed), then refused below
                self.db.table("linked_feedback").upsert({**row, "feedback_id": None}, pk=("source", "external_id"))
            elif linked is not None and linked[0] == message_id and linked[1] is not None and linked[1] > updated_at:
                return {"feedback_id": linked[2], "example_id": None, "status": None, "message_id": message_id,
                        "unchanged": True}
            else:
                result = self.record_feedback(
                    message_id, rating=rating, reason=reason, comment=comment, tags=tags, score=score, status=status,
                    actor=Actor.API, rater=rater,
                )
                self.db.table("linked_feedback").upsert(
                    {**row, "feedback_id": result["feedback_id"]}, pk=("source", "external_id")
                )
                return {**result, "message_id": message_id}
        raise NotFoundError(
            f"No answer stored here has the {source} message id {message_external_id!r}: only answers given "
            "through this server's /v1/chat/completions with the message id header can be rated from there"
        )

    def withdraw_linked_feedback(self, source: str, external_id: str, *, status: str) -> bool:
        """Take back a rating that `source` deleted (it keeps no trace but the id); False if none was stored."""
        with self._write():
            linked = self.db.execute(
                "select message_id, rater from linked_feedback where source = ? and external_id = ?",
                [source, external_id],
            ).fetchone()
            if linked is None:
                return False
            message_id, rater = linked
            if message_id is not None:
                self.record_feedback(message_id, rating=None, status=status, actor=Actor.API, rater=rater)
            self.db.execute("delete from linked_feedback where source = ? and external_id = ?", [source, external_id])
        return message_id is not None

    def linked_feedback_times(self, source: str) -> dict[str, int]:
        """Each rating of `source` stored here (or known not to be ours), by its id: its `updated_at`."""
        with self._lock:
            rows = self.db.execute(
                "select external_id, updated_at from linked_feedback where source = ?", [source]
            ).fetchall()
        return {r[0]: r[1] for r in rows}

    def answer_sources(self, message_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """What each answer's badge says: how it was made (model_version, few_shot_ids, from_example,
        related_ids), its original text, and its latest correction (None if never corrected)."""
        ids, marks = _id_marks(message_ids)
        if not ids:
            return {}
        with self._lock:
            rows = self.db.execute(
                f"""select m.id, m.content, m.model_version, m.few_shot_ids, m.from_example, m.related_ids,
                           (select f.correction from feedback f where f.message_id = m.id and f.correction is not null
                            order by f.id desc limit 1) as correction
                    from messages m where m.id in ({marks}) and m.role = ?""",
                [*ids, Role.ASSISTANT],
            ).fetchall()
        keys = ("id", "content", "model_version", "few_shot_ids", "from_example", "related_ids", "correction")
        return {row[0]: self._decode("messages", dict(zip(keys, row))) for row in rows}

    def list_feedback(
        self,
        *,
        rating: str | None = None,
        reason: str | None = None,
        model_version: str | None = None,
        since: str | None = None,
        until: str | None = None,
        text: str | None = None,
        current_only: bool = True,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Ratings with their answer, question, model version and example, newest first.

        `current_only` keeps each rater's latest rating of an answer (the one that
        counts); otherwise every click is listed (the history). Filters: rating
        ('up', 'down' or 'none' for withdrawn), reason, model version, ISO time
        bounds, and a text search in the question, answer and comment."""
        where: list[str] = ["f.correction is null"]
        params: list[Any] = []
        if current_only:
            where.append(
                "f.id in (select max(id) from feedback where correction is null group by message_id, rater)"
            )
        if rating == "none":
            where.append("f.rating is null")
        _add_filters(where, params, {
            "f.rating = ?": None if rating == "none" else rating,
            "lower(f.reason) = lower(?)": reason,
            "m.model_version = ?": model_version,
            "f.created_at >= ?": since,
            "f.created_at < ?": until,
        })
        if text:
            where.append("(m.content like ? or m.context like ? or f.comment like ?)")
            params.extend([f"%{text}%"] * 3)
        sql = f"""select f.id, f.message_id, f.rating, f.reason, f.comment, f.tags, f.score, f.rater, f.actor,
                         f.created_at,
                         f.example_id, m.content as answer, m.context, m.model_version, m.conversation_id,
                         e.status as example_status, e.source as example_source
                  from feedback f join messages m on m.id = f.message_id
                  left join examples e on e.id = f.example_id
                  where {" and ".join(where)} order by f.id desc"""
        if limit:
            sql += " limit ?"
            params.append(int(limit))
        with self._lock:
            cursor = self.db.execute(sql, params)
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, row)) for row in cursor.fetchall()]
        for row in rows:
            context = json.loads(row.pop("context") or "[]")
            row["question"] = next((m["content"] for m in reversed(context) if m["role"] == "user"), "")
            self._decode("feedback", row)
        return rows

    def downvoted_answers(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The model's answers its raters turned down and nobody corrected, newest first, one per question and
        answer: [{"message_id", "input" (the conversation it answered), "answer", "reasons", "downs", "ups",
        "model_version"}].

        Counted on each rater's current rating: more thumbs down than up. Left out: answers that were
        corrected (the correction example carries them as its rejected answer) and replies the model did not
        write (an approved answer stated word for word, an honest "not known yet" reply), which no training
        changes."""
        sql = """with current as (
                     select message_id, rating, reason from feedback
                     where id in (select max(id) from feedback where correction is null group by message_id, rater))
                 select m.id, m.context, m.content, m.model_version,
                        sum(c.rating = ?) as downs, sum(c.rating = ?) as ups,
                        group_concat(distinct lower(c.reason)) as reasons
                 from messages m join current c on c.message_id = m.id
                 where m.role = ? and m.from_example is null and m.related_ids is null and m.context is not null
                   and not exists (select 1 from feedback f where f.message_id = m.id and f.correction is not null)
                 group by m.id having downs > ups
                 order by m.id desc"""
        with self._lock:
            rows = self.db.execute(sql, [Rating.DOWN, Rating.UP, Role.ASSISTANT]).fetchall()
        seen: set[tuple[str, str]] = set()
        answers = []
        for message_id, context, content, version, downs, ups, reasons in rows:
            messages = json.loads(context)
            key = (input_key(messages), " ".join(re.sub(r"[\W_]+", " ", content.casefold()).split()))
            if not content.strip() or not messages or key in seen:
                continue
            seen.add(key)
            answers.append({
                "message_id": message_id, "input": messages, "answer": content, "model_version": version,
                "downs": downs, "ups": ups, "reasons": sorted((reasons or "").split(",")) if reasons else [],
            })
            if limit is not None and len(answers) >= limit:
                break
        return answers

    def record_feedback(
        self,
        message_id: int,
        *,
        rating: str | None = None,
        reason: str | None = None,
        comment: str | None = None,
        correction: str | None = None,
        status: str,
        actor: str,
        rater: str | None = None,
        tags: Sequence[str] | None = None,
        score: int | None = None,
    ) -> dict[str, Any]:
        """Store a rating and/or correction of an assistant answer and the example it makes, in one
        transaction: everything, or (on any error) nothing.

        A correction becomes a `correction` example (the answer kept as `rejected`), a thumbs-up an
        `upvote` example (except on the honest "not known yet" reply); a thumbs-down or an un-rating
        (rating None) is feedback only. Anything but
        a plain thumbs-up withdraws (rejects) the upvote examples this answer made before, except
        those whose status an admin set, which only an admin may change. `status` is the new
        example's status (the review policy's); `actor` who rates (an `Actor`); `rater` which person
        (a browser session), so that the UI can show each person their own current rating. `tags`
        and `score` (1 to 10) say more about a rating, as `reason` and `comment` do.
        Returns {"feedback_id", "example_id", "status"}; example_id and status are None when no
        example was made.
        """
        if rating is not None:
            check_choice("rating", rating, Rating)
        if correction is not None:
            correction = self.validate_output(correction, what="correction")
        check_choice("status", status, REVIEW_STATUSES)
        check_choice("actor", actor, Actor)
        tags, score = check_tags(tags), check_score(score)
        with self._write():
            message = self.get_message(message_id)
            if message["role"] != Role.ASSISTANT or not message.get("context"):
                raise ValidationError(f"Message {message_id} is not an assistant answer")
            if correction is not None and correction == normalise_text(message["content"]):
                raise ValidationError("The correction is the same as the answer: edit the text, or rate it instead")
            if correction is None:
                # One rating per answer per person: the latest wins, older rows stay as history.
                current = self._current_rating(message_id, rater)
                if current is not None and rating is not None and current["rating"] == rating:
                    # A reason, comment, tags or score refine the same thumb; none is lost by another.
                    reason = reason or current["reason"]
                    comment = comment or current["comment"]
                    tags = tags or (json.loads(current["tags"]) if current["tags"] else None)
                    score = score or current["score"]
                if current is not None and (
                    current["rating"], current["reason"], current["comment"],
                    json.loads(current["tags"]) if current["tags"] else None, current["score"],
                ) == (rating, reason, comment, tags, score):
                    # The same click again (the browser can send one twice): nothing new to store.
                    example = current["example_id"]
                    return {"feedback_id": current["id"], "example_id": example,
                            "status": self.get_example(example)["status"] if example else None, "unchanged": True}
            feedback_id = self.add_feedback(
                message_id, rating=rating, reason=reason, comment=comment, correction=correction, actor=actor,
                rater=rater, tags=tags, score=score,
            )
            withdrawn = None
            if rating != Rating.UP or correction is not None:
                withdrawn = self._withdraw_upvotes(message_id, actor, rater, keep_if_liked=correction is None)
            example_id = None
            if correction is not None:
                example_id = self.add_example(
                    message["context"], correction, source=ExampleSource.CORRECTION, status=status,
                    rejected=message["content"], message_id=message_id, feedback_id=feedback_id, actor=actor,
                )
            elif rating == Rating.UP and not message.get("related_ids"):
                # The honest "not known yet" reply, shown with related answers, is liked for its honesty; as an
                # example it would teach the model to answer that question with the template forever.
                example_id = self._upvote_example(message, feedback_id, status, actor)
            if example_id is not None:
                self.db.table("feedback").update(feedback_id, {"example_id": example_id})
                status = self.get_example(example_id)["status"]
        return {"feedback_id": feedback_id, "example_id": example_id, "status": status if example_id else None,
                "withdrawn": withdrawn}

    def _current_rating(self, message_id: int, rater: str | None) -> dict[str, Any] | None:
        # Inside record_feedback's transaction: a rater's latest rating row of one answer.
        cursor = self.db.execute(
            "select * from feedback where message_id = ? and rater is ? and correction is null order by id desc limit 1",
            [message_id, rater],
        )
        row = cursor.fetchone()
        return dict(zip([d[0] for d in cursor.description], row)) if row else None

    def _upvote_example(self, message: dict[str, Any], feedback_id: int, status: str, actor: str) -> int | None:
        """The one upvote example of an answer, however many people like it: the live one if there
        is one, else the one a rating withdrew (restored), else a new one. None if an admin rejected it."""
        row = self.db.execute(
            "select id, status from examples where message_id = ? and source = ? order by id desc limit 1",
            [message["id"], ExampleSource.UPVOTE],
        ).fetchone()
        if row is not None:
            example_id, current = row
            if current in (ExampleStatus.PENDING, ExampleStatus.APPROVED):
                return example_id
            if current == ExampleStatus.REJECTED:
                if self._status_set_by(example_id) == Actor.ADMIN and actor != Actor.ADMIN:
                    return None  # an admin's rejection stands
                self.update_example(example_id, status=status, actor=actor)
                return example_id
        return self.add_example(
            message["context"], message["content"], source=ExampleSource.UPVOTE, status=status,
            message_id=message["id"], feedback_id=feedback_id, actor=actor,
        )

    def _withdraw_upvotes(
        self, message_id: int, actor: str, rater: str | None = None, *, keep_if_liked: bool = False
    ) -> int | None:
        # Called inside record_feedback's transaction. A rating taken back by one person leaves
        # the example standing while another person's current rating of the answer is still up
        # (a correction withdraws it regardless: the answer was wrong).
        if keep_if_liked:
            others = self.db.execute(
                "select rating from feedback where id in (select max(id) from feedback where message_id = ? "
                "and correction is null and rater is not ? group by rater)",
                [message_id, rater],
            ).fetchall()
            if any(r[0] == Rating.UP for r in others):
                return None
        withdrawn = None
        rows = self.db.execute(
            "select examples.id, examples.status from feedback join examples on examples.id = feedback.example_id "
            "where feedback.message_id = ? and feedback.rating = ? and feedback.correction is null "
            "and examples.source = ? and examples.status in (?, ?)",
            [message_id, Rating.UP, ExampleSource.UPVOTE, ExampleStatus.PENDING, ExampleStatus.APPROVED],
        ).fetchall()
        for example_id, _ in rows:
            if actor != Actor.ADMIN and self._status_set_by(example_id) == Actor.ADMIN:
                continue
            self.update_example(example_id, status=ExampleStatus.REJECTED, actor=actor)
            withdrawn = example_id
        return withdrawn

    def _status_set_by(self, example_id: int) -> str | None:
        """Who last set an example's status (its creator if nobody changed it since)."""
        row = self.db.execute(
            "select actor from example_history where example_id = ? and field in ('created', 'status') "
            "order by id desc limit 1",
            [example_id],
        ).fetchone()
        return row[0] if row else None

    # -- examples ------------------------------------------------------------

    def validate_output(self, output: Any, *, what: str = "output") -> str:
        return validate_output(output, what=what, limit=self.max_output_chars)

    def add_example(
        self,
        input: Any,
        output: str,
        *,
        source: str,
        status: str = ExampleStatus.APPROVED,
        split: str | None = None,
        rejected: str | None = None,
        message_id: int | None = None,
        feedback_id: int | None = None,
        actor: str | None = None,
    ) -> int:
        """Validate and store an input/output example; return its id."""
        row = self._example_row(
            input, output, source=source, status=status, split=split, rejected=rejected,
            message_id=message_id, feedback_id=feedback_id,
        )
        with self._write():
            example_id = _new_id(self.db.table("examples").insert(row))
            self._history(example_id, "created", None, row["status"], actor, row["created_at"])
            if row["status"] == ExampleStatus.APPROVED:
                self._supersede_older(example_id, row["input_key"], row["created_at"])
        return example_id

    def _example_row(
        self,
        input: Any,
        output: str,
        *,
        source: str,
        status: str = ExampleStatus.APPROVED,
        split: str | None = None,
        rejected: str | None = None,
        message_id: int | None = None,
        feedback_id: int | None = None,
        stamp: str | None = None,
    ) -> dict[str, Any]:
        """An example checked and ready to insert (raises ValidationError naming the problem)."""
        messages = validate_messages(input)
        output = self.validate_output(output)
        check_choice("source", source, ExampleSource)
        check_choice("status", status, REVIEW_STATUSES)
        key = input_key(messages)
        split = split_for(key) if split is None else check_choice("split", split, Split)
        stamp = stamp or now()
        return {
            "input": messages,
            "input_text": messages[-1]["content"],
            "input_key": key,
            "output": output,
            "rejected": rejected,
            "source": str(source),
            "status": str(status),
            "split": str(split),
            "message_id": message_id,
            "feedback_id": feedback_id,
            "created_at": stamp,
            "updated_at": stamp,
        }

    def add_examples(
        self, rows: Iterable[dict[str, Any]], *, actor: str | None = None, chunk_rows: int = IMPORT_CHUNK_ROWS
    ) -> list[int]:
        """Store many examples: all of them, or (on any error) none; return their ids (see import_examples)."""
        return self.import_examples(rows, actor=actor, chunk_rows=chunk_rows).ids

    def import_examples(
        self, rows: Iterable[dict[str, Any]], *, actor: str | None = None, chunk_rows: int = IMPORT_CHUNK_ROWS
    ) -> ImportReport:
        """Store many examples: all of them, or (on any error) none; report the new ids, the stored
        examples they replaced and how many asked a new question.

        A large import must not stop chat, so it never holds the lock for long:
        1. every row is checked first, outside the lock (a bad row stores nothing);
        2. the rows go in `chunk_rows` at a time, one short transaction each, with the hidden
           status `importing` that no query shows, each noted in `import_rows` with its status;
        3. one last transaction gives them their statuses (a set-wise UPDATE of an indexed
           column: no full-text work), writes their history and supersedes older outputs.
        On an error the hidden rows are deleted; after a crash, the next Store opened on the
        file deletes those of an import whose process is gone.
        """
        stamp = now()
        prepared = [self._example_row(**row, stamp=stamp) for row in rows]
        if not prepared:
            return ImportReport([], [], 0)
        for row in prepared:
            row["input"] = json.dumps(row["input"], ensure_ascii=False)
        import_id = uuid.uuid4().hex
        columns = list(prepared[0])
        insert = f"insert into examples (id, {', '.join(columns)}) values (?{', ?' * len(columns)})"
        ids: list[int] = []
        try:
            for start in range(0, len(prepared), chunk_rows):
                chunk = prepared[start : start + chunk_rows]
                with self._write():
                    conn = self.db.conn
                    # Under the lock and SQLite's write lock nobody else inserts, so these ids are ours.
                    (first,) = conn.execute("select coalesce(max(id), 0) + 1 from examples").fetchone()
                    chunk_ids = list(range(first, first + len(chunk)))
                    conn.executemany(
                        insert, ([i, *(row[c] if c != "status" else IMPORTING for c in columns)]
                                 for i, row in zip(chunk_ids, chunk)),
                    )
                    conn.executemany(
                        "insert into import_rows (import_id, pid, example_id, status) values (?, ?, ?, ?)",
                        ((import_id, os.getpid(), i, row["status"]) for i, row in zip(chunk_ids, chunk)),
                    )
                ids.extend(chunk_ids)
            with self._write():
                approved_rows = [(i, row["input_key"]) for i, row in zip(ids, prepared)
                                 if row["status"] == ExampleStatus.APPROVED]
                replaced, new = self._publish_import(import_id, approved_rows, actor, stamp)
        except BaseException:
            self._drop_import(import_id)
            raise
        return ImportReport(ids=ids, replaced=replaced, new=new)

    def _publish_import(
        self, import_id: str, approved_rows: list[tuple[int, str]], actor: str | None, stamp: str
    ) -> tuple[list[int], int]:
        """Give an import's hidden rows their statuses and history; `approved_rows` are its
        (id, input_key) pairs to be approved, oldest first. Return the ids of stored examples
        the import superseded, and how many of its rows ask a question no stored example had."""
        conn = self.db.conn
        approved, superseded = ExampleStatus.APPROVED, ExampleStatus.SUPERSEDED
        staged = "(select example_id from import_rows where import_id = ?)"
        (new,) = conn.execute(
            f"select count(*) from examples e where e.id in {staged} and not exists "
            "(select 1 from examples o where o.input_key = e.input_key and o.status != ? "
            f"and o.id not in {staged})",
            [import_id, IMPORTING, import_id],
        ).fetchone()
        # The newest approved output of each input wins, as add_example does one at a time: each
        # older approved row is superseded by the next approved one of the same input. Found
        # before the rows are published, while only the older ones are approved.
        chains: dict[str, list[int]] = {}
        if approved_rows:
            conn.execute("create temp table if not exists import_keys (input_key text primary key)")
            conn.execute("delete from temp.import_keys")
            conn.executemany("insert or ignore into temp.import_keys values (?)", ((k,) for _, k in approved_rows))
            # CROSS JOIN: walk the import's keys and look each up in the input_key index.
            older = conn.execute(
                "select e.id, e.input_key from temp.import_keys k cross join examples e "
                "on e.input_key = k.input_key where e.status = ? order by e.id",
                [approved],
            ).fetchall()
            for example_id, key in [*older, *approved_rows]:
                chains.setdefault(key, []).append(example_id)
        replaced = [(old, new) for ids in chains.values() for old, new in zip(ids, ids[1:])]
        conn.execute(
            "update examples set status = (select status from import_rows r where r.example_id = examples.id) "
            f"where id in {staged}",
            [import_id],
        )
        conn.execute(
            "insert into example_history (example_id, field, old_value, new_value, actor, at) "
            "select example_id, 'created', null, status, ?, ? from import_rows where import_id = ? order by example_id",
            [actor, stamp, import_id],
        )
        conn.executemany(
            "update examples set status = ?, superseded_by = ?, updated_at = ? where id = ?",
            ((superseded, new, stamp, old) for old, new in replaced),
        )
        conn.executemany(
            "insert into example_history (example_id, field, old_value, new_value, actor, at) values (?, 'status', ?, ?, ?, ?)",
            ((old, approved, superseded, Actor.POLICY, stamp) for old, _ in sorted(replaced)),
        )
        imported = {example_id for example_id, _ in approved_rows}
        conn.execute("delete from import_rows where import_id = ?", [import_id])
        return sorted(old for old, _ in replaced if old not in imported), new

    def _drop_import(self, import_id: str) -> None:
        """Delete the hidden rows of an import that did not finish."""
        with self._write():
            self.db.execute(
                "delete from examples where id in (select example_id from import_rows where import_id = ?) "
                "and status = ?",
                [import_id, IMPORTING],
            )
            self.db.execute("delete from import_rows where import_id = ?", [import_id])

    def _drop_abandoned_imports(self) -> None:
        with self._lock:
            owners = self.db.execute("select distinct import_id, pid from import_rows").fetchall()
        for import_id, pid in owners:
            if not pid_alive(pid):
                self._drop_import(import_id)

    def _history(self, example_id: int, field: str, old: Any, new: Any, actor: str | None, at: str) -> None:
        self.db.table("example_history").insert(
            {
                "example_id": example_id,
                "field": field,
                "old_value": None if old is None else str(old),
                "new_value": None if new is None else str(new),
                "actor": actor,
                "at": at,
            }
        )

    def _supersede_older(self, example_id: int, key: str, at: str) -> None:
        # The newest approved output for an input wins; older ones stay as history.
        approved, superseded = ExampleStatus.APPROVED, ExampleStatus.SUPERSEDED
        older = self.db.execute(
            "select id from examples where input_key = ? and status = ? and id != ?",
            [key, approved, example_id],
        ).fetchall()
        for (old_id,) in older:
            self.db.table("examples").update(old_id, {"status": superseded, "superseded_by": example_id, "updated_at": at})
            self._history(old_id, "status", approved, superseded, Actor.POLICY, at)

    def get_example(self, example_id: int) -> dict[str, Any]:
        return self._get("examples", example_id, "Example")

    def update_example(
        self,
        example_id: int,
        *,
        status: str | None = None,
        output: str | None = None,
        split: str | None = None,
        input: Any = None,
        keep_turns: int | None = None,
        actor: str | None = None,
    ) -> dict[str, Any]:
        """Change an example's status, output, split or input, recording each old value; return the new row.

        `input` replaces the conversation (it must still end with a user turn); `keep_turns` trims it
        to its last N user turns, dropping the earlier chat a correction stored as its context.
        A new input has a new key: a split that was derived from the old key is derived again (so
        equal inputs never straddle splits), and an approved example supersedes older ones of it.
        """
        changes: dict[str, Any] = {}
        if status is not None:
            changes["status"] = check_choice("status", status, REVIEW_STATUSES)
        if output is not None:
            changes["output"] = self.validate_output(output)
        if split is not None:
            changes["split"] = check_choice("split", split, Split)
        if input is not None and keep_turns is not None:
            raise ValidationError("Give either a new input or keep_turns, not both")
        if input is not None:
            changes["input"] = validate_messages(input)
        if not changes and keep_turns is None:
            raise ValidationError("Nothing to change: give status, output, split, input or keep_turns")
        with self._write():
            current = self.get_example(example_id)
            if keep_turns is not None:
                changes["input"] = keep_last_turns(current["input"], keep_turns)
            stamp = now()
            changed = {k: v for k, v in changes.items() if current[k] != v}
            for field, value in changed.items():
                if field == "input":
                    self._history(example_id, field, _json(current[field]), _json(value), actor, stamp)
                else:
                    self._history(example_id, field, current[field], value, actor, stamp)
            key = current["input_key"]
            if "input" in changed:
                key = input_key(changed["input"])
                changed.update(input_text=changed["input"][-1]["content"], input_key=key)
                derived = split_for(key)
                if "split" not in changed and current["split"] == split_for(current["input_key"]) != derived:
                    self._history(example_id, "split", current["split"], derived, Actor.POLICY, stamp)
                    changed["split"] = derived
            if changed:
                changed["updated_at"] = stamp
                if changed.get("status") and changed["status"] != ExampleStatus.SUPERSEDED:
                    changed["superseded_by"] = None
                self.db.table("examples").update(example_id, changed)
            status_now = changed.get("status", current["status"])
            if status_now == ExampleStatus.APPROVED and ("status" in changed or "input" in changed):
                self._supersede_older(example_id, key, stamp)
        return self.get_example(example_id)

    def update_examples(
        self, example_ids: Sequence[int], *, actor: str | None = None, **changes: Any
    ) -> list[dict[str, Any]]:
        """Make the same change (status, output, split or keep_turns) to several examples in one transaction:
        all or none."""
        with self._write():
            return [self.update_example(example_id, actor=actor, **changes) for example_id in example_ids]

    def _example_filters(
        self,
        status: str | None = None,
        source: str | None = None,
        split: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> tuple[str, list[Any]]:
        clauses, params = ([], []) if status else (["status != ?"], [IMPORTING])
        for column, value, allowed in (
            ("status", status, ExampleStatus),
            ("source", source, ExampleSource),
            ("split", split, Split),
        ):
            if value:
                check_choice(column, value, allowed)
        _add_filters(clauses, params, {
            "status = ?": status, "source = ?": source, "split = ?": split,
            "created_at >= ?": since, "created_at < ?": until,
        })
        return " and ".join(clauses), params

    def list_examples(
        self,
        *,
        status: str | None = None,
        source: str | None = None,
        split: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = 100,
        offset: int = 0,
        newest_first: bool = True,
    ) -> list[dict[str, Any]]:
        """Examples matching every given filter."""
        where, params = self._example_filters(status, source, split, since, until)
        order = "id desc" if newest_first else "id"
        with self._lock:
            rows = self.db.table("examples").rows_where(where, params, order_by=order, limit=limit, offset=offset or None)
            return [self._decode("examples", r) for r in rows]

    def count_examples(self, **filters: Any) -> int:
        where, params = self._example_filters(**filters)
        with self._lock:
            return self.db.execute(f"select count(*) from examples where {where}", params).fetchone()[0]

    def example_history(self, example_id: int) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.db.table("example_history").rows_where("example_id = ?", [example_id], order_by="id"))

    def search_examples(
        self,
        query: str,
        *,
        limit: int = 3,
        exclude_ids: Sequence[int] = (),
        candidates: int = 50,
        min_score: float = 0.0,
    ) -> list[dict[str, Any]]:
        """Approved examples whose last user turn shares meaningful words with `query`, best first.

        FTS5 (bm25) picks the `candidates`; storage/search.py's rank() scores
        them (a `score` from 0 to 1). Rows scoring 0, or below `min_score`, are left out.
        """
        words = query_words(query)
        if not words or limit <= 0:
            return []
        match = " OR ".join(f'"{w}"' for w in words)
        sql = (
            "select examples.* from examples_fts join examples on examples.rowid = examples_fts.rowid "
            "where examples_fts match ? and examples.status = ? order by bm25(examples_fts) limit ?"
        )
        excluded = set(exclude_ids)
        with self._lock:
            cursor = self.db.execute(sql, [match, ExampleStatus.APPROVED, candidates + len(excluded)])
            columns = [d[0] for d in cursor.description]
            found = [row for row in (dict(zip(columns, r)) for r in cursor.fetchall()) if row["id"] not in excluded]
            (total,) = self.db.execute("select count(*) from examples").fetchone()

            def doc_freq(vocabulary: list[str]) -> dict[str, int]:
                placeholders = ", ".join("?" * len(vocabulary))
                sql = f"select term, doc from examples_fts_vocab where term in ({placeholders})"
                return dict(self.db.execute(sql, vocabulary).fetchall())

            ranked = rank(query, found, doc_freq, total, min_score=min_score)
        return [self._decode("examples", row) for row in ranked[:limit]]

    def mark_trained(self, example_ids: Sequence[int], version: str) -> None:
        """Record the version an example was first trained in."""
        with self._write():
            for example_id in example_ids:
                self.db.execute(
                    "update examples set trained_in_version = ? where id = ? and trained_in_version is null",
                    [version, example_id],
                )

    def count_training_changes(self, since: str | None = None) -> int:
        """Approved examples (both splits: every one is trained on) added or changed after `since`
        (all of them when None): what a training run started at `since` has not seen."""
        sql = "select count(*) from examples where status = ?"
        params: list[Any] = [ExampleStatus.APPROVED]
        if since:
            sql += " and updated_at > ?"
            params.append(since)
        with self._lock:
            return self.db.execute(sql, params).fetchone()[0]

    # -- model versions ------------------------------------------------------

    def next_version_name(self) -> str:
        with self._lock:
            (number,) = self.db.execute("select coalesce(max(number), 0) + 1 from model_versions").fetchone()
        return f"v{number}"

    def add_model_version(self, version: str, **fields: Any) -> dict[str, Any]:
        number = int(version.lstrip("v"))
        row = {"version": version, "number": number, "status": VersionStatus.CANDIDATE, "created_at": now(), **fields}
        with self._write():
            self.db.table("model_versions").insert(row)
        return self.get_model_version(version)

    def update_model_version(self, version: str, **fields: Any) -> dict[str, Any]:
        with self._write():
            self.get_model_version(version)
            self.db.table("model_versions").update(version, fields)
        return self.get_model_version(version)

    def get_model_version(self, version: str) -> dict[str, Any]:
        return self._get("model_versions", version, "Model version")

    def list_model_versions(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._decode("model_versions", r) for r in self.db.table("model_versions").rows_where(order_by="number")]

    def active_version(self) -> dict[str, Any] | None:
        """The active adapter version, or None when the base model serves."""
        with self._lock:
            rows = list(self.db.table("model_versions").rows_where("status = ?", [VersionStatus.ACTIVE], limit=1))
        return self._decode("model_versions", rows[0]) if rows else None

    def activate_version(self, version: str | None) -> None:
        """Make `version` the only active one (None: serve the base model)."""
        with self._write():
            if version is not None:
                self.get_model_version(version)
            # The one serving steps down: inactive, or back to rejected if the gate had rejected it
            # (an admin activated it anyway), so the label says what the gate said.
            self.db.execute(
                "update model_versions set status = case when exists (select 1 from jobs "
                "where jobs.model_version = model_versions.version and jobs.promoted = 0) then ? else ? end "
                "where status = ?",
                [VersionStatus.REJECTED, VersionStatus.INACTIVE, VersionStatus.ACTIVE],
            )
            if version is not None:
                self.db.table("model_versions").update(version, {"status": VersionStatus.ACTIVE, "activated_at": now()})

    # -- jobs ----------------------------------------------------------------

    def create_job(self, kind: str, params: dict[str, Any] | None = None) -> int:
        """Queue a job; raise ConflictError if one is already queued or running."""
        with self._write():
            running = self.active_job()
            if running is not None:
                raise ConflictError(f"A {running['kind']} job (#{running['id']}) is already {running['status']}")
            return _new_id(self.db.table("jobs").insert(
                {
                    "kind": kind,
                    "status": JobStatus.QUEUED,
                    "params": params or {},
                    "losses": [],
                    "cancel_requested": 0,
                    "created_at": now(),
                }
            ))

    def update_job(self, job_id: int, **fields: Any) -> dict[str, Any]:
        if "status" in fields:
            check_choice("job status", fields["status"], JobStatus)
        with self._write():
            self.db.table("jobs").update(job_id, fields)
        return self.get_job(job_id)

    def get_job(self, job_id: int) -> dict[str, Any]:
        return self._get("jobs", job_id, "Job")

    def active_job(self) -> dict[str, Any] | None:
        with self._lock:
            rows = list(
                self.db.table("jobs").rows_where("status in (?, ?)", list(ACTIVE_JOB_STATUSES), order_by="id", limit=1)
            )
        return self._decode("jobs", rows[0]) if rows else None

    def list_jobs(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._lock:
            return [self._decode("jobs", r) for r in self.db.table("jobs").rows_where(order_by="id desc", limit=limit)]


def _id_marks(message_ids: Sequence[int]) -> tuple[list[int], str]:
    """Up to MAX_RATED_IDS message ids as integers, and the "?, ?, …" that binds them in an `in (…)`."""
    ids = [int(i) for i in message_ids][:MAX_RATED_IDS]
    return ids, ", ".join("?" for _ in ids)
