"""Model versions and adapters in the catalog, with their artifacts in the data directory."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from compat.adapters import Adapter, load_adapter, save_adapter
from index.catalog import Adapter as AdapterRecord
from index.catalog import ModelVersion
from index.context import Context
from kernels.errors import (
    ConflictError,
    CorruptArtifactError,
    DirectionError,
    InvalidInputError,
    NotFoundError,
    did_you_mean,
)
from models.checkpoint import load_encoder, save_encoder
from models.encoders import Encoder


def register_version(ctx: Context, session: Session, name: str, encoder: Encoder) -> ModelVersion:
    """Save the encoder's weights under ``models/`` and record the version with their sha256."""
    _refuse_existing(session, ModelVersion, name, "model version")
    path = ctx.path(f"models/{name}.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    sha256 = save_encoder(encoder, path)
    version = ModelVersion(
        name=name,
        encoder_key=encoder.key,
        config_json=encoder.config.to_json(),
        weights_sha256=sha256,
        dim=encoder.embed_dim,
    )
    session.add(version)
    session.flush()
    return version


EXTERNAL = (
    "external"  # encoder_key of a version whose vectors come from outside (an API, a pipeline)
)


def register_external_version(session: Session, name: str, dim: int) -> ModelVersion:
    """A version hotswap cannot run itself: its vectors arrive precomputed (ingest, migrate)."""
    _refuse_existing(session, ModelVersion, name, "model version")
    if dim <= 0:
        raise InvalidInputError(f"dimension must be > 0, got {dim}")
    version = ModelVersion(name=name, encoder_key=EXTERNAL, config_json="{}", dim=dim)
    session.add(version)
    session.flush()
    return version


PRETRAINED = "pretrained"  # encoder_key of a version embedded by a models.loaders spec


def register_pretrained_version(
    session: Session, name: str, spec: str, fingerprint: dict[str, Any], dim: int
) -> ModelVersion:
    """A version hotswap embeds with a pretrained library model (``load_pretrained(spec)``)."""
    _refuse_existing(session, ModelVersion, name, "model version")
    config = json.dumps({"spec": spec, "fingerprint": fingerprint}, sort_keys=True)
    version = ModelVersion(
        name=name,
        encoder_key=PRETRAINED,
        config_json=config,  # the weights' sha256 is in the fingerprint: no file of ours holds them
        dim=dim,
    )
    session.add(version)
    session.flush()
    return version


def load_pretrained_version(version: ModelVersion) -> Any:
    """The version's pretrained encoder (a models.loaders.PretrainedEncoder), its weights checked."""
    from models.loaders import load_pretrained

    if version.encoder_key != PRETRAINED:
        raise InvalidInputError(
            f"model version {version.name!r} has no pretrained encoder (encoder: {version.encoder_key})",
            fix="send vectors instead, or register one with: hotswap models add NAME --encoder SPEC",
        )
    config = json.loads(version.config_json)
    encoder = load_pretrained(config["spec"])
    if encoder.fingerprint["weights_sha256"] != config["fingerprint"]["weights_sha256"]:
        raise CorruptArtifactError(
            f"the weights behind {version.name!r} changed since it was registered",
            fix="register the installed model as a new version",
        )
    return encoder


def get_version(session: Session, name: str) -> ModelVersion:
    version = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
    if version is None:
        known = list(session.scalars(select(ModelVersion.name)))
        raise NotFoundError(f"unknown model version {name!r}", fix=did_you_mean(name, known))
    return version


def load_version_encoder(ctx: Context, version: ModelVersion) -> Encoder:
    if version.encoder_key == EXTERNAL:
        raise InvalidInputError(
            f"model version {version.name!r} is external: hotswap holds no encoder for it",
            fix="embed with your own pipeline and pass the vectors (ingest --vectors, migrate --vectors)",
        )
    return load_encoder(ctx.path(f"models/{version.name}.safetensors"), version.weights_sha256)


def register_adapter(
    ctx: Context,
    session: Session,
    adapter: Adapter,
    source: ModelVersion,
    target: ModelVersion,
    name: str | None = None,
    metrics: dict[str, float] | None = None,
) -> AdapterRecord:
    """Record an adapter from ``source`` to ``target``; its widths must match the two versions.

    A backward adapter maps the newer ``source`` into the older ``target`` (queries); a forward
    adapter maps the older ``source`` into the newer ``target`` (gallery vectors).
    """
    name = name or f"{source.name}-to-{target.name}"
    _refuse_existing(session, AdapterRecord, name, "adapter")
    adapter.expect(adapter.direction, source.dim, target.dim)
    path = ctx.path(f"adapters/{name}.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    record = AdapterRecord(
        name=name,
        key=adapter.key,
        config_json=adapter.config.to_json(),
        source_version_id=source.id,
        target_version_id=target.id,
        direction=adapter.direction,
        artifact_path=ctx.relative(path),
        artifact_sha256=save_adapter(adapter, path),
        metrics_json=json.dumps(metrics or {}),
    )
    session.add(record)
    session.flush()
    return record


def query_adapter(
    ctx: Context, session: Session, query: ModelVersion, gallery: ModelVersion
) -> Adapter:
    """The backward adapter that sends ``query``-version vectors into ``gallery``'s space.

    A forward adapter between the same versions is refused with a DirectionError: it maps gallery
    vectors the other way, and applying it to queries would pass every shape check and return junk.
    """
    records = session.scalars(
        select(AdapterRecord).where(
            AdapterRecord.source_version_id.in_([query.id, gallery.id]),
            AdapterRecord.target_version_id.in_([query.id, gallery.id]),
        )
    ).all()
    for record in records:
        if (record.source_version_id, record.direction) == (query.id, "backward"):
            adapter = load_adapter(ctx.path(record.artifact_path), record.artifact_sha256)
            adapter.expect("backward", query.dim, gallery.dim)
            return adapter
    if records:
        raise DirectionError(
            f"the adapters between {query.name!r} and {gallery.name!r} "
            f"({', '.join(r.name + ': ' + r.direction for r in records)}) cannot map "
            f"{query.name} queries into {gallery.name}'s space",
            fix=f"fit a backward adapter from {query.name} to {gallery.name}",
        )
    raise NotFoundError(
        f"no adapter from {query.name!r} to {gallery.name!r}: {query.name} queries cannot search "
        f"items still embedded by {gallery.name}",
        fix=f"fit one (hotswap fit) or migrate the rest of the gallery to {query.name}",
    )


def _refuse_existing(session: Session, table: Any, name: str, what: str) -> None:
    if session.scalar(select(table).where(table.name == name)) is not None:
        raise ConflictError(f"{what} {name!r} already exists", fix="choose another name")


def fit_and_register(
    ctx: Context,
    source: str,
    target: str,
    source_vectors: Any,
    target_vectors: Any,
    *,
    key: str | None = None,
    direction: str = "backward",
    name: str | None = None,
    seed: int = 0,
    labels: Any = None,
    config: dict[str, Any] | None = None,
    queries: Any = None,
    target_queries: Any = None,
) -> dict[str, Any]:
    """Fit an adapter on paired vectors (row i = the same item embedded by ``source`` and by
    ``target``) and record it with its held-out scores. ``key=None`` selects the best registered
    adapter on a held-out 20% of the pairs. ``labels`` (N,) int, the anchors' classes, if known:
    label-aware adapters train on them and the selection ranks by held-out class top-1.
    ``config``: the chosen ``key``'s config fields (e.g. ``{"hard_negatives": 8}``).
    ``queries`` (Q, d_source): sample queries embedded by ``source``; each also trains the adapter
    towards the anchor ``source`` answers it with (compat/answer_pairs.py). ``target_queries``
    (Q, d_target): the same queries embedded by ``target``, if available: their own pairs join."""
    import torch

    from compat.answer_pairs import with_answers
    from compat.fitting import fit_adapter, select_adapter
    from compat.vectors import check_vectors

    if config and key is None:
        raise InvalidInputError(
            "an adapter config sets one adapter's fields, and no adapter was named",
            fix="name the adapter (hotswap fit --adapter KEY), or drop the config",
        )
    with ctx.transaction() as session:
        src, dst = get_version(session, source), get_version(session, target)
        x = check_vectors(torch.as_tensor(source_vectors), src.dim, f"{source} anchor vectors")
        y = check_vectors(torch.as_tensor(target_vectors), dst.dim, f"{target} anchor vectors")
        classes = None if labels is None else torch.as_tensor(labels)
        q, qt = (
            None
            if v is None
            else check_vectors(torch.as_tensor(v), version.dim, f"{version.name} query vectors")
            for v, version in ((queries, src), (target_queries, dst))
        )
        options: dict[str, Any] = {"direction": direction, "seed": seed}
        if key is None:
            chosen = select_adapter(x, y, labels=classes, queries=q, queries_target=qt, **options)
            adapter, metrics = chosen.adapter, _selection_metrics(chosen)
        else:
            fx, fy, fl = with_answers(x, y, q, classes, qt)
            report = fit_adapter(key, fx, fy, config=config, labels=fl, **options)
            adapter, metrics = report.adapter, {"train_cosine": report.train.cosine}
        if classes is not None:  # shown by `models show`: this fit saw class labels
            metrics["labelled"] = True
        if q is not None:  # and how many queries taught it the source model's answers
            metrics["answer_queries"] = len(q)
            metrics["query_pairs"] = qt is not None  # their own pairs joined the fit
        record = register_adapter(ctx, session, adapter, src, dst, name=name, metrics=metrics)
        record.fit_size = len(x)
        return {
            "name": record.name,
            "kind": adapter.key,
            "direction": adapter.direction,
            "source": source,
            "target": target,
            "pairs": len(x),
            "config": adapter.config.to_dict(),
            "metrics": metrics,
        }


def _selection_metrics(selection: Any) -> dict[str, Any]:
    scores = {
        key: {"cosine": r.held_out.cosine, "recall@10": r.held_out.recall_at_10}
        | ({} if r.held_out.class_top1 is None else {"class_top1": r.held_out.class_top1})
        | (
            {}
            if r.held_out.answer_recall is None
            else {"answer_recall@10": r.held_out.answer_recall}
        )
        for key, r in selection.reports.items()
        if r.held_out is not None
    }
    return {
        "criterion": selection.criterion,
        "anchors": selection.anchors,
        "held_out_pairs": selection.held_out,
        "held_out": scores,
    }


def describe_version(ctx: Context, name: str) -> dict[str, Any]:
    """One version as ``hotswap models show`` prints it: config, fingerprint, spaces, adapters."""
    from index.catalog import EmbeddingSpace

    with ctx.transaction() as session:
        version = get_version(session, name)
        config = json.loads(version.config_json)
        touching = (AdapterRecord.source_version_id == version.id) | (
            AdapterRecord.target_version_id == version.id
        )
        adapters = session.scalars(select(AdapterRecord).where(touching).order_by(AdapterRecord.id))
        spaces = session.scalars(
            select(EmbeddingSpace).where(EmbeddingSpace.model_version_id == version.id)
        )
        return {
            "name": version.name,
            "dim": version.dim,
            "encoder": version.encoder_key,
            "config": config.get("spec", config) if version.encoder_key == PRETRAINED else config,
            "fingerprint": config.get("fingerprint", {"weights_sha256": version.weights_sha256}),
            "status": version.status,
            "spaces": [{"name": s.name, "vectors": s.ntotal} for s in spaces],
            "adapters": [
                {
                    "name": a.name,
                    "kind": a.key,
                    "direction": a.direction,
                    "role": "out" if a.source_version_id == version.id else "in",
                    "source": a.source_version.name,
                    "target": a.target_version.name,
                    "metrics": json.loads(a.metrics_json or "{}"),
                }
                for a in adapters
            ],
        }
