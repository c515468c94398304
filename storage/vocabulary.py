"""Exemplar's words: the statuses, sources, splits and ratings the database stores.

Each is a `str` enum, so a member *is* its word: it equals the literal, hashes
like it, is stored and JSON-encoded as it, and formats as it. Storage, the API
models, the UI dropdowns, the CLI and the training worker name them from here
rather than retyping the strings. (storage imports nothing of the project, so
the vocabulary lives here and the other packages import it.)
"""

from __future__ import annotations

import enum


class Word(str, enum.Enum):
    """A str enum that reads as its value everywhere: str(), f-strings, repr in error messages."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def __repr__(self) -> str:  # pydantic's "Input should be 'a' or 'b'" names the words, not the class
        return repr(self.value)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)


class Role(Word):
    """Who speaks a chat message."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class ExampleSource(Word):
    """How an example came to be."""

    CORRECTION = "correction"  # a user rewrote a bad answer
    UPVOTE = "upvote"  # a user liked an answer as it was
    IMPORT = "import"  # from a file
    ADMIN = "admin"  # typed in by an admin
    SEED = "seed"  # the examples a data dir starts from


class ExampleStatus(Word):
    """Where an example is in review. Only approved examples are trained on or shown as few-shot demonstrations."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"  # set by the store when a newer approved output for the same input arrives


# The statuses a person (admin, import, policy) may give; `superseded` is the store's alone.
REVIEW_STATUSES = (ExampleStatus.PENDING, ExampleStatus.APPROVED, ExampleStatus.REJECTED)


class Split(Word):
    """Trained on, or held out to measure."""

    TRAIN = "train"
    TEST = "test"


class Rating(Word):
    UP = "up"
    DOWN = "down"


# The reasons the chat's flag menu offers for a thumbs-down, as shown; stored lower-cased as feedback.reason.
DISLIKE_REASONS = ("Wrong fact", "Unhelpful", "Too long", "Unsafe")


class JobStatus(Word):
    """A training job's life: queued → running → one of the four ends."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # trained and promoted
    FAILED = "failed"
    REJECTED = "rejected"  # trained but the gate kept the serving version
    CANCELLED = "cancelled"


ACTIVE_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


class VersionStatus(Word):
    """A trained model version's standing."""

    CANDIDATE = "candidate"
    ACTIVE = "active"
    INACTIVE = "inactive"  # served once, stepped down: it can be activated again
    REJECTED = "rejected"


# The version name of the base model without an adapter (never a row in model_versions).
BASE_VERSION = "base"


class Actor(Word):
    """Who made a change, as example history records it."""

    ADMIN = "admin"  # someone who gave the admin password (Admin tab, admin API, the CLI on the data dir)
    UI = "ui"  # an anonymous user of the chat UI
    API = "api"  # an anonymous client of the public HTTP API (/api/feedback)
    POLICY = "policy"  # the store's own rules, e.g. a newer approved output superseding an older one

