"""Named schema migrations. Each runs once, in order, inside a transaction;
a new column or table is a new migration, never an edit of an old one."""

from sqlite_utils import Database, Migrations

migrations = Migrations("exemplar")


@migrations()
def m001_initial(db: Database) -> None:
    db.table("conversations").create(
        {"id": int, "created_at": str, "source": str, "system_prompt": str},
        pk="id",
    )
    db.table("messages").create(
        {
            "id": int,
            "conversation_id": int,
            "role": str,
            "content": str,
            # Assistant turns only: the chat messages the model answered (system
            # prompt and earlier turns included, few-shot demonstrations not).
            "context": str,
            "model_version": str,
            "gen_params": str,
            "few_shot_ids": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("conversation_id", "conversations", "id")],
    )
    db.table("messages").create_index(["conversation_id"])
    db.table("feedback").create(
        {
            "id": int,
            "message_id": int,
            "rating": str,
            "reason": str,
            "comment": str,
            "correction": str,
            "example_id": int,
            "actor": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("message_id", "messages", "id")],
    )
    db.table("feedback").create_index(["message_id"])
    db.table("examples").create(
        {
            "id": int,
            "input": str,  # JSON list of {"role", "content"}, ending with a user turn
            "input_text": str,  # the last user turn, indexed for few-shot retrieval
            "input_key": str,  # hash of the normalised input, for dedupe and a stable split
            "output": str,
            "rejected": str,
            "source": str,
            "status": str,
            "split": str,
            "message_id": int,
            "feedback_id": int,
            "superseded_by": int,
            "trained_in_version": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
    )
    for columns in (["status"], ["source"], ["input_key"], ["created_at"]):
        db.table("examples").create_index(columns)
    db.table("example_history").create(
        {"id": int, "example_id": int, "field": str, "old_value": str, "new_value": str, "actor": str, "at": str},
        pk="id",
        foreign_keys=[("example_id", "examples", "id")],
    )
    db.table("example_history").create_index(["example_id"])
    db.table("model_versions").create(
        {
            "version": str,
            "number": int,
            "parent_version": str,
            "base_model": str,
            "path": str,
            "metrics": str,
            "status": str,
            "example_ids": str,
            "job_id": int,
            "train_config": str,
            "notes": str,
            "created_at": str,
            "activated_at": str,
        },
        pk="version",
    )
    db.table("jobs").create(
        {
            "id": int,
            "kind": str,
            "status": str,
            "params": str,
            "pid": int,
            "heartbeat_at": str,
            "progress": str,
            "losses": str,
            "metrics": str,
            "model_version": str,
            "promoted": int,
            "error": str,
            "log": str,
            "cancel_requested": int,
            "created_at": str,
            "started_at": str,
            "finished_at": str,
        },
        pk="id",
    )


@migrations()
def m002_examples_fts(db: Database) -> None:
    # Triggers keep the index in step with every insert, update and delete.
    db.table("examples").enable_fts(["input_text"], fts_version="FTS5", create_triggers=True, tokenize="porter")


@migrations()
def m003_examples_fts_vocab(db: Database) -> None:
    # How many examples hold each (Porter-stemmed) term: the rarity weights of
    # few-shot relevance (storage/search.py) come from here in one query.
    db.execute("create virtual table examples_fts_vocab using fts5vocab(examples_fts, 'row')")


@migrations()
def m004_feedback_rater(db: Database) -> None:
    # Who rated: a browser's id (the UI keeps one per browser) or an API client's
    # `user`. One rating per answer per rater is current; older rows stay as history.
    db.table("feedback").add_column("rater", str)
    db.table("feedback").create_index(["message_id", "rater"])


@migrations()
def m005_import_rows(db: Database) -> None:
    # The rows of an import in progress (Store.add_examples): hidden until the whole import
    # is in, then given these statuses in one transaction; `pid` lets a later process
    # delete the rows of an import whose process died.
    db.table("import_rows").create(
        {"example_id": int, "import_id": str, "pid": int, "status": str}, pk="example_id"
    )
    db.table("import_rows").create_index(["import_id"])
    # Only a change of the indexed text needs the full-text index touched; a status
    # change (review, supersede, publishing an import) no longer rewrites it.
    db.execute("drop trigger if exists examples_au")
    db.execute(
        "create trigger examples_au after update of input_text on examples begin "
        "insert into examples_fts (examples_fts, rowid, input_text) values('delete', old.rowid, old.input_text); "
        "insert into examples_fts (rowid, input_text) values (new.rowid, new.input_text); end"
    )


@migrations()
def m006_answer_sources(db: Database) -> None:
    # Which kind of answer an assistant turn is, so each answer's badge can say so later (a
    # reopened chat, an undo): the approved example stated word for word, or the related
    # examples an honest reply showed (JSON list). Both null for the model's own answer.
    db.table("messages").add_column("from_example", int)
    db.table("messages").add_column("related_ids", str)


@migrations()
def m007_feedback_details(db: Database) -> None:
    # What a rating may say beyond its thumb and reason (the chat's rating panel, Open WebUI's
    # feedback): free tags (a JSON list of short strings) and a score from 1 to 10.
    db.table("feedback").add_column("tags", str)
    db.table("feedback").add_column("score", int)


@migrations()
def m008_inactive_versions(db: Database) -> None:
    # A version that served and stepped down can be activated again: "inactive" says so, where
    # "retired" read as gone for good.
    db.execute("update model_versions set status = 'inactive' where status = 'retired'")


@migrations()
def m009_linked_front_ends(db: Database) -> None:
    # A front end with its own chat store (Open WebUI) names its messages and ratings with its own ids.
    # linked_messages maps its message id to the answer stored here, so a rating made there days later
    # (after an edit, after a restart) reaches exactly that answer; linked_feedback maps its rating id
    # to the rater it stands for, so a rating withdrawn there (deleted, leaving only its id) is withdrawn
    # here, and a rating sent twice is stored once (`updated_at` is the front end's own clock).
    db.table("linked_messages").create(
        {"source": str, "external_id": str, "message_id": int, "chat_id": str, "user_id": str, "created_at": str},
        pk=("source", "external_id"),
    )
    db.table("linked_messages").create_index(["message_id"])
    db.table("linked_feedback").create(
        {"source": str, "external_id": str, "message_id": int, "rater": str, "updated_at": int,
         "feedback_id": int, "created_at": str},
        pk=("source", "external_id"),
    )
