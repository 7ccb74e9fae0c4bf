"""A summary of a deployment: versions, spaces, adapters, migration runs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from index.catalog import Adapter, EmbeddingSpace, ItemEmbedding, MigrationRun, ModelVersion
from index.context import Context


def summary(ctx: Context) -> dict[str, Any]:
    with ctx.transaction() as session:
        authoritative = dict(
            session.execute(
                select(ItemEmbedding.space_id, func.count())
                .where(ItemEmbedding.authoritative.is_(True))
                .group_by(ItemEmbedding.space_id)
            ).all()
        )
        names = dict(session.execute(select(ModelVersion.id, ModelVersion.name)).all())
        return {
            "versions": [
                {"name": v.name, "encoder": v.encoder_key, "dim": v.dim, "status": v.status}
                for v in session.scalars(select(ModelVersion).order_by(ModelVersion.id))
            ],
            "spaces": [
                {
                    "name": s.name,
                    "version": names[s.model_version_id],
                    "vectors": s.ntotal,
                    "authoritative": authoritative.get(s.id, 0),
                    "snapshot": s.snapshot_seq,
                }
                for s in session.scalars(select(EmbeddingSpace).order_by(EmbeddingSpace.id))
            ],
            "adapters": [
                {
                    "name": a.name,
                    "kind": a.key,
                    "direction": a.direction,
                    "source": names[a.source_version_id],
                    "target": names[a.target_version_id],
                }
                for a in session.scalars(select(Adapter).order_by(Adapter.id))
            ],
            "migrations": [
                {
                    "run": r.id,
                    "state": r.state,
                    "ordering": r.ordering,
                    "done": r.done_items,
                    "total": r.total_items,
                }
                for r in session.scalars(select(MigrationRun).order_by(MigrationRun.id))
            ],
        }
