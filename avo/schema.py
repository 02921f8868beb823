"""The nouns of avo: Definition, Workload, Solution, Trace.

Field names follow the FlashInfer Trace format (flashinfer-bench's `flashinfer_bench.data`), so a
definition, solution or trace moves between avo and FlashInfer-Bench / SOL-ExecBench without
conversion. avo's own additions (tolerance, SOL model, in-place inputs, per-workload dtypes, SOL
fields in the evaluation) are extra keys that flashinfer-bench ignores when it loads our JSON.

SOL-ExecBench's extensions of that format are read as it defines them (NVIDIA/SOL-ExecBench
`core/data/*.py`, read 2026-12 at 8d2237d): `op_type` optional, `expr` axes, digit-literal shape
entries, `float64`, `custom_inputs_entrypoint` with `{"type": "custom"}` inputs, a per-workload
`tolerance` (max_atol, max_rtol, required_matched_ratio, max_error_cap, allow_negative_inf), and a
solution `spec.languages` list (mapped onto `language`, the list kept as given).
"""
from __future__ import annotations

import ast
import math
from enum import Enum
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

DTYPE_NAMES = ("float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float4_e2m1",
               "int64", "int32", "int16", "int8", "bool")
# Bytes per element of a definition's shape. FP4 is packed two to a byte (SOL-ExecBench's
# float4_e2m1fn_x2; its float4_e2m1 names the same torch dtype): the tensor's last dim is half the shape's.
DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1,
               "float4_e2m1": 0.5, "float4_e2m1fn_x2": 0.5, "int64": 8, "int32": 4, "int16": 2, "int8": 1, "bool": 1}
PACKED_FP4 = ("float4_e2m1", "float4_e2m1fn_x2")
DType = Literal["float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float4_e2m1",
                "float4_e2m1fn_x2", "int64", "int32", "int16", "int8", "bool"]


class AvoModel(BaseModel):
    # Unknown keys are kept (not dropped) so foreign JSON round-trips through avo losslessly.
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    # Optional fields written only when set: what other formats define and avo's own files never
    # carried, so avo's JSON (and every exported artifact) stays byte for byte what it was.
    _OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_unset_extensions(self, handler):
        data = handler(self)
        if isinstance(data, dict):
            for k in self._OMIT_IF_NONE:
                if k in data and data[k] is None:
                    del data[k]
        return data


class AxisConst(AvoModel):
    type: Literal["const"] = "const"
    value: int = Field(ge=0)
    description: Optional[str] = None


class AxisVar(AvoModel):
    type: Literal["var"] = "var"
    description: Optional[str] = None


class AxisExpr(AvoModel):
    """SOL-ExecBench: an axis computed from others (`"expression": "num_heads * head_dim"`)."""
    type: Literal["expr"] = "expr"
    expression: str = Field(min_length=1)
    description: Optional[str] = None


_EXPR_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Load, ast.Add, ast.Sub,
               ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.UAdd, ast.USub)


def eval_axis_expr(expr: str, axes: dict[str, int]) -> int:
    """An expr axis's value: numbers, axis names, + - * / // % ** and parentheses; an integer."""
    tree = ast.parse(expr, mode="eval")
    bad = next((type(n).__name__ for n in ast.walk(tree) if not isinstance(n, _EXPR_NODES)), None)
    if bad:
        raise ValueError(f"axis expression {expr!r}: {bad} is not allowed")
    try:
        v = eval(compile(tree, "<axis>", "eval"), {"__builtins__": {}}, dict(axes))
    except NameError as e:
        raise ValueError(f"axis expression {expr!r}: {e}") from None
    if float(v) != int(v):
        raise ValueError(f"axis expression {expr!r} is {v}, not an integer")
    return int(v)


class TensorSpec(AvoModel):
    shape: Optional[list[str]]  # axis names; None = scalar
    dtype: DType
    description: Optional[str] = None


class Tolerance(AvoModel):
    """An element passes when |out - ref| <= atol + rtol * |ref|; a workload passes when at least
    `matched_ratio` of the elements pass, no element is NaN where the reference is finite, and (when
    set) no error exceeds `max_error_cap`."""
    atol: float = 1e-2
    rtol: float = 1e-2
    matched_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    max_error_cap: Optional[float] = None
    _OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ("max_error_cap",)


class WorkloadTolerance(AvoModel):
    """SOL-ExecBench's per-workload tolerance (its ToleranceSpec); what it sets overrides the
    definition's. Infinities must match exactly either way, so `allow_negative_inf` is accepted as
    what avo already does."""
    max_atol: Optional[float] = None
    max_rtol: Optional[float] = None
    required_matched_ratio: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    max_error_cap: Optional[float] = None
    allow_negative_inf: bool = False


class SolModel(AvoModel):
    """Work per workload as Python expressions over the axes, the scalar inputs, and for each
    tensor `isz_<name>` (bytes per element) and `numel_<name>`. Missing flops/bytes are derived
    from the reference (FLOP counter on meta tensors, unique input + output bytes)."""
    flops: Optional[str] = None
    bytes: Optional[str] = None
    compute_dtype: DType = "bfloat16"  # which tensor-core peak bounds the FLOPs


class Definition(AvoModel):
    name: str = Field(min_length=1)
    op_type: Optional[str] = None  # required by flashinfer-bench, optional in SOL-ExecBench
    axes: dict[str, Annotated[Union[AxisConst, AxisVar, AxisExpr], Field(discriminator="type")]]
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    reference: str = Field(min_length=1)
    tags: list[str] = Field(default_factory=list)
    description: Optional[str] = None
    constraints: list[str] = Field(default_factory=list)
    # avo extensions
    tolerance: Tolerance = Field(default_factory=Tolerance)
    sol: SolModel = Field(default_factory=SolModel)
    inplace: list[str] = Field(default_factory=list)  # inputs the kernel mutates: they are the outputs
    forbidden_calls: list[str] = Field(default_factory=list)  # names/aten ops that do the task for you
    # Integer/bool inputs the timed calls perturb like the floating ones (a stretch of the tensor
    # copied over another): only where any such copy is still a valid input (a bitmask, not sorted
    # indices or offsets), so a cache keyed on them cannot replay work across the timed calls.
    perturb_integers: Optional[list[str]] = None
    custom_inputs_entrypoint: Optional[str] = None  # SOL-ExecBench: reference function making "custom" inputs
    origin: Optional[str] = None  # a task converted from another format: "kernelbench:level1/19_ReLU.py"
    _OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ("op_type", "custom_inputs_entrypoint", "origin", "perturb_integers")

    @model_validator(mode="after")
    def _check(self) -> "Definition":
        try:
            mod = ast.parse(self.reference)
        except SyntaxError as e:
            raise ValueError(f"reference is not valid Python: {e}") from e
        if not any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in mod.body):
            raise ValueError("reference must define a top-level function `run`")
        ep = self.custom_inputs_entrypoint
        if ep is not None and not any(isinstance(n, ast.FunctionDef) and n.name == ep for n in mod.body):
            raise ValueError(f"custom_inputs_entrypoint {ep!r} is not a top-level function of the reference")
        if set(self.inputs) & set(self.outputs):
            raise ValueError("input and output names must not overlap")
        for tname, spec in {**self.inputs, **self.outputs}.items():
            for ax in spec.shape or []:
                if ax not in self.axes and not ax.isdigit():
                    raise ValueError(f"tensor {tname!r} references undefined axis {ax!r}")
        for name in self.inplace:
            if name not in self.inputs:
                raise ValueError(f"inplace names {name!r}, which is not an input")
        for word in self.forbidden_calls:
            if not word.strip():
                raise ValueError("forbidden_calls holds an empty name (it would match every call)")
        for name in self.perturb_integers or []:
            spec = self.inputs.get(name)
            if spec is None:
                raise ValueError(f"perturb_integers names {name!r}, which is not an input")
            if spec.shape is None:
                raise ValueError(f"perturb_integers names {name!r}, a scalar (only tensors are perturbed)")
            if not spec.dtype.startswith(("int", "bool")):
                raise ValueError(f"perturb_integers names {name!r}, a {spec.dtype} input (floating inputs "
                                 "are always perturbed)")
        if not self.outputs and not self.inplace:
            raise ValueError("a definition needs outputs or inplace inputs")
        return self

    @property
    def const_axes(self) -> dict[str, int]:
        return {k: a.value for k, a in self.axes.items() if isinstance(a, AxisConst)}

    def axis_values(self, var: dict[str, int]) -> dict[str, int]:
        """Every axis of a workload: const, the workload's var values, then expr axes (in order,
        so one may use another defined before it)."""
        axes = {**self.const_axes, **var}
        for k, a in self.axes.items():
            if isinstance(a, AxisExpr):
                axes[k] = eval_axis_expr(a.expression, axes)
        return axes

    def dims(self, tensor: str, axes: dict[str, int]) -> tuple[int, ...]:
        """A tensor's shape from resolved axes (a digit string in a shape is a literal size)."""
        spec = {**self.inputs, **self.outputs}[tensor]
        return tuple(int(a) if a.isdigit() else axes[a] for a in spec.shape or [])

    def io_bytes(self, w: "Workload") -> int:
        """Unique input + output bytes of a workload (each tensor read or written once)."""
        axes = self.axis_values(w.axes)
        return int(sum(math.prod(self.dims(n, axes)) * DTYPE_BYTES[w.dtypes.get(n, s.dtype)]
                       for n, s in {**self.inputs, **self.outputs}.items() if s.shape is not None))

    def tolerance_for(self, w: "Workload") -> Tolerance:
        """The definition's tolerance with what the workload sets (SOL-ExecBench) on top."""
        t = w.tolerance
        if t is None:
            return self.tolerance
        up = {"atol": t.max_atol, "rtol": t.max_rtol, "matched_ratio": t.required_matched_ratio,
              "max_error_cap": t.max_error_cap}
        return self.tolerance.model_copy(update={k: v for k, v in up.items() if v is not None})

    @property
    def result_names(self) -> list[str]:
        """What correctness compares: the outputs, then the in-place inputs."""
        return list(self.outputs) + list(self.inplace)


class RandomInput(AvoModel):
    type: Literal["random"] = "random"


class ScalarInput(AvoModel):
    type: Literal["scalar"] = "scalar"
    value: Union[bool, int, float]


class SafetensorsInput(AvoModel):
    type: Literal["safetensors"] = "safetensors"
    path: str
    tensor_key: str


class CustomInput(AvoModel):
    """SOL-ExecBench: made by the definition's `custom_inputs_entrypoint`."""
    type: Literal["custom"] = "custom"


InputSpec = Annotated[Union[RandomInput, ScalarInput, SafetensorsInput, CustomInput], Field(discriminator="type")]


class Workload(AvoModel):
    axes: dict[str, int]
    inputs: dict[str, InputSpec]
    uuid: str = Field(min_length=1)
    # avo extensions: dtype overrides per tensor; `cpu` workloads are small enough for the
    # Triton interpreter; GPU workloads are the real shapes.
    dtypes: dict[str, DType] = Field(default_factory=dict)
    target: Literal["gpu", "cpu"] = "gpu"
    label: Optional[str] = None
    tolerance: Optional[WorkloadTolerance] = None  # SOL-ExecBench: overrides the definition's
    _OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ("tolerance",)

    @model_validator(mode="after")
    def _custom_alone(self) -> "Workload":
        kinds = {isinstance(s, CustomInput) for s in self.inputs.values()}
        if kinds == {True, False}:
            raise ValueError("custom inputs cannot be mixed with other kinds (SOL-ExecBench: all or none)")
        return self

    def key(self) -> str:
        """Shape key used by apply() dispatch and reports: axes + dtype overrides + scalars."""
        parts = [f"{k}={v}" for k, v in sorted(self.axes.items())]
        parts += [f"{k}:{v}" for k, v in sorted(self.dtypes.items())]
        parts += [f"{k}={s.value}" for k, s in sorted(self.inputs.items()) if isinstance(s, ScalarInput)]
        return ",".join(parts)


class SourceFile(AvoModel):
    path: str = Field(min_length=1)
    content: str = Field(min_length=1)

    @model_validator(mode="after")
    def _safe_path(self) -> "SourceFile":
        if self.path.startswith("/") or ".." in self.path.split("/"):
            raise ValueError(f"unsafe source path {self.path!r}")
        return self


# SOL-ExecBench's `spec.languages` values -> flashinfer-bench's `language` (the one avo builds by).
SOL_LANGUAGES = {"pytorch": "python", "triton": "triton", "cute_dsl": "python", "cutile": "python",
                 "cudnn_frontend": "python", "cutlass": "cuda", "cudnn": "cuda", "cublas": "cuda", "cuda_cpp": "cuda"}


class BuildSpec(AvoModel):
    language: Literal["python", "triton", "cpp", "cuda", "tilelang"]
    target_hardware: list[str] = Field(min_length=1)
    entry_point: str
    dependencies: list[str] = Field(default_factory=list)
    destination_passing_style: bool = True  # False: the entry returns its outputs (a tensor, tuple or dict)

    @model_validator(mode="before")
    @classmethod
    def _languages(cls, raw: Any) -> Any:
        """SOL-ExecBench writes `languages: [...]`; the most specific one names `language`."""
        if isinstance(raw, dict) and "language" not in raw and "languages" in raw:
            langs = raw["languages"]
            if not isinstance(langs, list) or not langs:
                raise ValueError("languages must be a non-empty list")
            unknown = [x for x in langs if x not in SOL_LANGUAGES]
            if unknown:
                raise ValueError(f"languages: unknown {unknown[0]!r} (known: {', '.join(SOL_LANGUAGES)})")
            mapped = {SOL_LANGUAGES[x] for x in langs}
            if "cuda" in mapped and mapped != {"cuda"}:
                raise ValueError("languages: C++ and Python languages cannot be mixed")
            raw = {**raw, "language": "triton" if "triton" in mapped else mapped.pop()}
        return raw

    @model_validator(mode="after")
    def _entry(self) -> "BuildSpec":
        if self.entry_point.count("::") != 1:
            raise ValueError(f"entry_point must be 'file::function', got {self.entry_point!r}")
        return self


class Solution(AvoModel):
    name: str = Field(min_length=1)
    definition: str = Field(min_length=1)
    author: str = Field(min_length=1)
    spec: BuildSpec
    sources: list[SourceFile] = Field(min_length=1)
    description: Optional[str] = None

    @model_validator(mode="after")
    def _entry_in_sources(self) -> "Solution":
        paths = [s.path for s in self.sources]
        if len(set(paths)) != len(paths):
            raise ValueError("duplicate source paths")
        if self.entry_file not in paths:
            raise ValueError(f"entry file {self.entry_file!r} not among the sources")
        return self

    @property
    def entry_file(self) -> str:
        return self.spec.entry_point.split("::")[0]

    @property
    def entry_symbol(self) -> str:
        return self.spec.entry_point.split("::")[1]

    def source(self, path: Optional[str] = None) -> str:
        path = path or self.entry_file
        return next(s.content for s in self.sources if s.path == path)


class EvaluationStatus(str, Enum):
    PASSED = "PASSED"
    INCORRECT_SHAPE = "INCORRECT_SHAPE"
    INCORRECT_NUMERICAL = "INCORRECT_NUMERICAL"
    INCORRECT_DTYPE = "INCORRECT_DTYPE"
    RUNTIME_ERROR = "RUNTIME_ERROR"
    COMPILE_ERROR = "COMPILE_ERROR"
    TIMEOUT = "TIMEOUT"
    REWARD_HACK = "REWARD_HACK"  # avo: flashinfer-bench has no such status; never exported
    # avo: a CUDA C++ solution compile-checked on a machine with no CUDA GPU (the interpreter mode),
    # so never run: neither a failure of the solution nor a pass. Never exported; `avo eval` exits 0.
    COMPILED_NOT_RUN = "COMPILED_NOT_RUN"


class Correctness(AvoModel):
    model_config = ConfigDict(extra="allow", ser_json_inf_nan="strings")
    max_relative_error: float = 0.0
    max_absolute_error: float = 0.0
    extra: Optional[dict[str, Any]] = None


class Performance(AvoModel):
    latency_ms: float = Field(default=0.0, ge=0.0)
    reference_latency_ms: float = Field(default=0.0, ge=0.0)  # the baseline, timed interleaved
    speedup_factor: float = Field(default=0.0, ge=0.0)
    # avo: spread and SOL
    latency_iqr_ms: float = 0.0
    reference_latency_iqr_ms: float = 0.0
    iterations: int = 0
    wall_latency_ms: Optional[float] = None  # synced host wall time per call (includes launch cost)
    sol_latency_ms: Optional[float] = None
    sol_fraction: Optional[float] = None  # T_SOL / T_k
    sol_score: Optional[float] = None  # 1 / (1 + (T_k - T_SOL) / (T_b - T_SOL))
    flops: Optional[float] = None
    bytes: Optional[float] = None


class Environment(AvoModel):
    hardware: str = Field(min_length=1)
    libs: dict[str, str] = Field(default_factory=dict)
    # avo: timing conditions
    device_mode: Literal["cuda", "interpret"] = "cuda"
    sol_hardware: Optional[str] = None
    timing_method: Optional[str] = None  # events | cupti (CUDA), wall (interpreter); absent in older traces
    sm_clock_mhz_before: Optional[int] = None
    sm_clock_mhz_after: Optional[int] = None
    throttle_reasons: list[str] = Field(default_factory=list)
    throttled: bool = False
    _OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ("timing_method",)


class Evaluation(AvoModel):
    status: EvaluationStatus
    environment: Environment
    timestamp: str
    log: str = ""
    correctness: Optional[Correctness] = None
    performance: Optional[Performance] = None
    hack_check: Optional[str] = None  # avo: which reward-hack check fired


class Trace(AvoModel):
    definition: str
    workload: Workload
    solution: Optional[str] = None
    evaluation: Optional[Evaluation] = None

    @property
    def passed(self) -> bool:
        return self.evaluation is not None and self.evaluation.status == EvaluationStatus.PASSED


def finite_or_none(x: Optional[float]) -> Optional[float]:
    return x if x is not None and math.isfinite(x) else None
