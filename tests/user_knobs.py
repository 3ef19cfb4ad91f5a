"""A user-defined knob and a pipeline that honours it, living outside greenknobs (as a user's would).

Named in an experiment file:

    pipeline: {name: "tests.user_knobs:ClassifierWithUserKnobs", ...}
    knobs:
      user.freeze_embeddings: {class: "tests.user_knobs:FreezeEmbeddings", choices: [false, true]}
"""

from __future__ import annotations

from typing import Any

from greenknobs.knobs import Knob, Space
from greenknobs.ml import probes
from pipelines.text_classification import TextClassificationPipeline


class FreezeEmbeddings(Knob):
    name = "user.freeze_embeddings"
    phase = "model"
    default = False
    space = Space(choices=(False, True))
    value_type = bool
    description = "Keep the pre-trained token embeddings fixed during fine-tuning."
    verifies = "the embedding weights are bit-identical before and after training"

    def apply(self, ctx, value: bool) -> None:
        emb = ctx.model.get_input_embeddings()
        ctx.observed.record("user_embeddings_before", probes.checksum(emb))
        if value:
            emb.weight.requires_grad_(False)

    def verify(self, ctx, value: bool) -> dict[str, Any]:
        before = ctx.observed.require("user_embeddings_before", self.name)
        unchanged = probes.checksum(ctx.trained_model.get_input_embeddings()) == before
        self.expect(unchanged == value, f"embeddings {'changed' if not unchanged else 'did not change'} in training")
        return {"embeddings_unchanged": unchanged}


class ClassifierWithUserKnobs(TextClassificationPipeline):
    """The built-in classifier, also honouring the user's knob (it acts on ctx.model by itself)."""

    knobs = TextClassificationPipeline.knobs + ("user.freeze_embeddings",)
