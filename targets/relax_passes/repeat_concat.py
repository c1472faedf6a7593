"""``concat([x, x, ..., x], axis)`` as a broadcast, not as a chain of selects.

The expansion MLP adds its input, repeated ``k`` times along the channels, to its ``k*C`` wide
output (``concat`` of ``k`` copies of the same tensor in the ONNX graph). Legalised, a concat is
one ``if_then_else`` per field on the channel index, which is the vector lane: the fused
residual + PReLU kernel ran scalar. ``reshape(broadcast_to(expand_dims(x, axis)))`` is the same
tensor with a plain ``x[..., c % C]`` read, which vectorises.
"""

from __future__ import annotations

import tvm
from tvm import relax

from .common import Emitter, concat_parts, rebuild_block, rewrite_functions, static_shape


def _rewrite_block(block: relax.BindingBlock) -> relax.BindingBlock:
    bindings: list = []
    emit = Emitter(bindings, isinstance(block, relax.DataflowBlock), "rep")
    for binding in block.bindings:
        parts = concat_parts(binding.value if isinstance(binding, relax.VarBinding) else None)
        if parts is not None:
            fields, axis = parts
            shape = static_shape(fields[0])
            out_shape = static_shape(binding.var)
            if len(fields) > 1 and shape is not None and out_shape is not None and all(f.same_as(fields[0]) for f in fields):
                axis %= len(shape)
                wide = shape[:axis] + [len(fields)] + shape[axis:]
                rep = emit(relax.op.broadcast_to(emit(relax.op.expand_dims(fields[0], axis)), wide))
                bindings.append(relax.VarBinding(binding.var, relax.op.reshape(rep, out_shape)))
                continue
        bindings.append(binding)
    return rebuild_block(block, bindings)


def repeat_concat() -> tvm.transform.Pass:
    """Module pass: every concat of one tensor with itself becomes expand_dims/broadcast/reshape."""

    @tvm.transform.module_pass(opt_level=0, name="BhvitRepeatConcat")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_functions(mod, _rewrite_block)

    return _pass
