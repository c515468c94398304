"""Admin routes: curate examples, import and export them, train, and switch model versions.

Each route needs `Authorization: Bearer <admin password>`. The training routes
use the training controller passed in by the server (bot never imports training); a server
without one answers them with a 409 that says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, Field, Strict

from bot.api.auth import admin_dependency
from bot.api.chat import MAX_ID, RowId
from bot.api.responses import error_responses
from bot.auth import AdminGuard
from bot.chat.service import ChatService
from core.errors import ConflictError
from core.training_contract import Activation, JobView, LearningReport, ModelVersionView, TrainingController
from storage.formats import EXPORT_FORMATS, IMPORT_FORMATS
from storage.vocabulary import Actor, ExampleSource, ExampleStatus, Role, Split

# The subsets of the vocabulary a route accepts (superseded is the store's to set; a folder cannot be posted).
ReviewStatus = Literal[ExampleStatus.PENDING, ExampleStatus.APPROVED, ExampleStatus.REJECTED]
ImportStatus = Literal[ExampleStatus.APPROVED, ExampleStatus.PENDING]
if TYPE_CHECKING:  # mypy cannot read a Literal built at run time; FastAPI validates against the real one
    ImportFormat = str
    ExportFormat = str
else:
    ImportFormat = Literal[tuple(f for f in IMPORT_FORMATS if f != "hf")]
    ExportFormat = Literal[tuple(f for f in EXPORT_FORMATS if f != "hf")]

ACTOR = Actor.ADMIN  # every route here needs the admin password
NO_TRAINING = (
    "training is not available in this server (it was started without a training controller); "
    "use `python launch.py train` or start the server with training enabled"
)


class ExampleMessage(BaseModel):
    role: Role
    content: str


class Example(BaseModel):
    """An input/output example as stored."""

    id: int
    input: list[ExampleMessage] = Field(description="The conversation up to the user's turn.")
    input_text: str = Field(description="Its last user turn (what few-shot retrieval searches).")
    input_key: str = Field(description="A hash of the normalised input: equal inputs share it (and their split).")
    output: str
    rejected: str | None = Field(None, description="For a correction, the answer it replaced.")
    source: ExampleSource
    status: ExampleStatus
    split: Split
    message_id: int | None = Field(None, description="The answer it was made from (a correction or a thumbs-up).")
    feedback_id: int | None = Field(None, description="The rating or correction that made it.")
    superseded_by: int | None = Field(None, description="The newer approved example for the same input, if any.")
    trained_in_version: str | None = Field(None, description="The first version trained on it.")
    created_at: str
    updated_at: str


class ExampleList(BaseModel):
    total: int = Field(description="How many examples match the filters (before limit/offset).")
    examples: list[Example]


class NewExample(BaseModel):
    input: str | list[ExampleMessage] = Field(description="A question, or chat messages ending with a user turn.")
    output: str
    split: Split | None = Field(None, description="Held out ('test') or trained on; derived from the input if absent.")
    status: ReviewStatus = ExampleStatus.APPROVED


class ExamplePatch(BaseModel):
    status: ReviewStatus | None = None
    output: str | None = None
    split: Split | None = None
    input: str | list[ExampleMessage] | None = Field(
        None, description="A new input (chat messages ending with a user turn), e.g. the stored context edited."
    )
    keep_turns: Annotated[int, Strict()] | None = Field(
        None, ge=1, le=10_000,
        description="Keep only the last N user turns of the input (a correction stores the whole chat before it).",
    )


class ImportResult(BaseModel):
    imported: int = Field(description="How many records were stored.")
    ids: list[int]
    new: int = Field(description="Records asking a question no stored example had.")
    replaced: int = Field(description="Stored examples the import replaced (same question; now superseded).")
    replaced_ids: list[int] = Field(description="Their ids (kept as history).")
    message: str = Field(description="The same, in one sentence.")


class JobAccepted(BaseModel):
    job_id: int


class ModelVersions(BaseModel):
    serving: str = Field(description="The version the engine answers with now ('base' for the base model).")
    models: list[ModelVersionView] = Field(description="Every trained version with its metrics and status, newest first.")


class TryRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=64_000, description="One user message to answer.")
    version: str | None = Field(
        None, max_length=64,
        description="The version to try beside the one serving, such as v3 or 'base' (default: the newest other one).",
    )


class TriedAnswerView(BaseModel):
    version: str = Field(description="The version that wrote the answer.")
    serving: bool = Field(description="Whether it is the version serving now.")
    label: str = Field(description="The version and its role, e.g. 'v2 (chosen version)'.")
    text: str


class TryResult(BaseModel):
    prompt: str
    answers: list[TriedAnswerView] = Field(description="The chosen version's answer, then the serving version's.")


def admin_router(service: ChatService, guard: AdminGuard, training: TrainingController | None = None) -> APIRouter:
    store = service.store
    def need_training() -> TrainingController:
        if training is None:
            raise ConflictError(NO_TRAINING)
        return training

    # Every route: 400 (the Host check, a refused value), and the password's 401 and 429.
    router = APIRouter(prefix="/api", dependencies=[Depends(admin_dependency(guard))], tags=["admin"],
                       responses=error_responses(400, 401, 429))

    # -- examples -------------------------------------------------------------

    @router.get("/examples", response_model=ExampleList, responses=error_responses(422))
    def list_examples(
        status: ExampleStatus | None = None,
        source: ExampleSource | None = None,
        split: Split | None = None,
        since: str | None = Query(None, description="ISO time: created at or after"),
        until: str | None = Query(None, description="ISO time: created before"),
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=MAX_ID),
    ) -> dict[str, Any]:
        """Examples, newest first, with the total that match the filters."""
        filters: dict[str, Any] = {"status": status, "source": source, "split": split, "since": since, "until": until}
        return {
            "total": store.count_examples(**filters),
            "examples": store.list_examples(**filters, limit=limit, offset=offset),
        }

    @router.post("/examples", status_code=201, response_model=Example, responses=error_responses(413, 422, 507))
    def create_example(body: NewExample) -> dict[str, Any]:
        """Add an example by hand (source `admin`)."""
        example_input = body.input if isinstance(body.input, str) else [m.model_dump() for m in body.input]
        example_id = store.add_example(
            example_input, body.output, source=ExampleSource.ADMIN, status=body.status, split=body.split, actor=ACTOR
        )
        return store.get_example(example_id)

    @router.patch("/examples/{example_id}", response_model=Example, responses=error_responses(404, 413, 422, 507))
    def patch_example(example_id: RowId, body: ExamplePatch) -> dict[str, Any]:
        """Change an example's status, output, split or input (each change is kept in its history).
        `keep_turns` trims the input to its last N user turns; `input` replaces it."""
        new_input = body.input if body.input is None or isinstance(body.input, str) else [m.model_dump() for m in body.input]
        return store.update_example(
            example_id, status=body.status, output=body.output, split=body.split, input=new_input,
            keep_turns=body.keep_turns, actor=ACTOR,
        )

    @router.post(
        "/examples/import",
        status_code=201,
        response_model=ImportResult,
        responses=error_responses(413, 422, 507),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/x-ndjson": {"schema": {"type": "string"}, "example": (
                    '{"messages": [{"role": "user", "content": "What is 2 + 2?"}, '
                    '{"role": "assistant", "content": "4"}]}\n')}},
                "description": "One example per line (jsonl chat messages, dpo or kto rows).",
            }
        },
    )
    async def import_examples(
        request: Request,
        format: ImportFormat | None = Query(None, description="Guessed from the records' keys if absent."),
        status: ImportStatus | None = Query(
            None, description="Give every record this status ('pending' sends an untrusted file to review)."
        ),
    ) -> dict[str, Any]:
        """Import examples from the body (JSONL, or CSV / a JSON list): every record, or (on any bad line) none.
        The answer says how many were new questions and which stored examples they replaced (importing
        the same file again replaces every row: the older copies stay as superseded history).

        A bad record answers 400 naming its line; records exported by GET /api/examples/export
        keep their source, status and split.
        """
        from storage.exchange import import_data, import_summary

        data = await request.body()
        report = await run_in_threadpool(lambda: import_data(store, data, format, status=status, actor=ACTOR))
        return {
            "imported": len(report.ids), "ids": report.ids, "new": report.new, "replaced": len(report.replaced),
            "replaced_ids": report.replaced, "message": import_summary(report, "the request"),
        }

    @router.get(
        "/examples/export",
        response_class=Response,
        responses={200: {"content": {"application/x-ndjson": {}}, "description": "One example per line."},
                   **error_responses(422)},
    )
    def export_examples(
        format: ExportFormat = Query("jsonl"),
        status: ExampleStatus | None = None,
        source: ExampleSource | None = None,
        split: Split | None = None,
    ) -> Response:
        """Export examples as JSONL: `jsonl` (chat messages), `dpo` (prompt/chosen/rejected) or
        `kto` (prompt/completion/label).

        Without a `status` filter every current example is exported (pending, approved and
        rejected; superseded outputs are history and stay behind), oldest first, so importing
        the file into a fresh data directory reproduces the same examples.
        """
        from storage.exchange import ALL, examples_for_export
        from storage.formats import export_examples as render

        rows = examples_for_export(store, status or ALL, source=source, split=split)
        return Response(
            render(rows, format),
            media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="exemplar-{format}.jsonl"'},
        )

    # -- training and versions ------------------------------------------------

    @router.post("/train", status_code=202, response_model=JobAccepted, responses=error_responses(409, 413, 422, 507))
    def train(
        params: dict[str, Any] | None = Body(None, description="Hyper-parameters to override, e.g. {\"epochs\": 3}."),
    ) -> dict[str, Any]:
        """Start a training job (409 while one runs)."""
        return {"job_id": need_training().start(params or None, reason="api")}

    @router.get("/jobs/{job_id}", response_model=JobView, responses=error_responses(404, 409, 422))
    def get_job(job_id: RowId) -> JobView:
        """A job's status, progress, losses, metrics, and the version it produced."""
        return need_training().job_view(job_id)

    @router.delete("/jobs/{job_id}", response_model=JobView, responses=error_responses(404, 409, 413, 422, 507))
    def cancel_job(job_id: RowId) -> JobView:
        """Ask a queued or running job to stop; answers the job as it is now."""
        runner = need_training()
        runner.cancel(job_id)
        return runner.job_view(job_id)

    @router.get("/models", response_model=ModelVersions)
    def list_models() -> ModelVersions:
        """Every trained version with its metrics, and the one serving."""
        if training is not None:
            models = training.models_view()
        else:
            models = [ModelVersionView.from_row(row) for row in reversed(store.list_model_versions())]
        return ModelVersions(serving=service.engine.version, models=models)

    @router.get("/learning", response_model=LearningReport, responses=error_responses(404, 409, 422))
    def learning(
        version: str | None = Query(None, description="A trained version such as v3 (default: the one serving)."),
        not_learned: bool = Query(False, description="Only the corrections the version does not answer."),
    ) -> LearningReport:
        """"Did it learn this?": per approved correction, learned or not (few-shot off) under the version and
        under the one it was judged against, with the margins log p(correction) − log p(replaced answer)
        under the base model, that version and this one, and why a correction was not learned."""
        return need_training().learning_report(version, not_learned_only=not_learned)

    @router.post("/models/try", response_model=TryResult, responses=error_responses(404, 409, 413, 422, 502))
    def try_on_both(body: TryRequest) -> TryResult:
        """"Try it on both": the prompt answered by the chosen version and by the one serving now, each
        labelled, with few-shot off and greedy decoding. Nothing is stored, and no user is answered by the
        chosen version (the built-in engine pauses chat for that one answer). 400 for an empty prompt or
        the serving version itself, 404 for an unknown version."""
        answers = service.try_versions(body.prompt, body.version)
        return TryResult(
            prompt=body.prompt,
            answers=[TriedAnswerView(version=a.version, serving=a.serving, label=a.label, text=a.text) for a in answers],
        )

    @router.post("/models/{version}/activate", response_model=Activation,
                 responses=error_responses(404, 409, 413, 422, 507))
    def activate(version: str) -> Activation:
        """Serve `version` (promote or roll back; `base` for the base model)."""
        return need_training().activate(version)

    return router
