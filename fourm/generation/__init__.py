"""Any-to-any generation: targets, the sampler, guidance, chains and editing, decoding to outputs.

    from fourm.generation import Chain, Sampler, Target
    sampler = Sampler(model, load_tokenizers("tokenizers/shapes64"))
    out = sampler.generate({"rgb": image}, [Target("tok_depth", steps=4), Target("caption")], seed=0)
    out.decode(sampler.tokenizers)["caption"]

* :mod:`~fourm.generation.target` - :class:`Target` (what to generate, how).
* :mod:`~fourm.generation.sampler` - :class:`Sampler`, :class:`GenerationResult`.
* :mod:`~fourm.generation.schedules` - MaskGIT token schedules, temperature schedules.
* :mod:`~fourm.generation.sampling` - top-k / top-p / temperature sampling with a generator.
* :mod:`~fourm.generation.guidance` - batched classifier-free and weighted multi-condition guidance.
* :mod:`~fourm.generation.kv_cache` - cached autoregressive decoding of sequences.
* :mod:`~fourm.generation.inputs` - the generation state; raw inputs and tokens into it.
* :mod:`~fourm.generation.chain` - :class:`Chain` and the edits (in-paint, text, boxes).
* :mod:`~fourm.generation.decode` - tokens to images / text / boxes, PNG grids, box overlays.
"""
from fourm.generation.chain import Chain, add_boxes, drop, edit, inpaint, remove_boxes
from fourm.generation.decode import decode_state, draw_boxes, render_grid, save_png
from fourm.generation.guidance import Condition, GuidancePlan, plan_guidance, stack_branches
from fourm.generation.kv_cache import IncrementalDecoder
from fourm.generation.sampler import GenerationResult, Sampler
from fourm.generation.sampling import sample_logits
from fourm.generation.schedules import TemperatureSchedule, token_counts
from fourm.generation.target import Target

__all__ = [
    "Chain",
    "Condition",
    "GenerationResult",
    "GuidancePlan",
    "IncrementalDecoder",
    "Sampler",
    "Target",
    "TemperatureSchedule",
    "add_boxes",
    "decode_state",
    "draw_boxes",
    "drop",
    "edit",
    "inpaint",
    "plan_guidance",
    "remove_boxes",
    "render_grid",
    "sample_logits",
    "save_png",
    "stack_branches",
    "token_counts",
]
