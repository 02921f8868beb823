"""The nouns of avo: Definition, Workload, Solution, Trace.

Field names follow the FlashInfer Trace format (flashinfer-bench's `flashinfer_bench.data`), so a
definition, solution or trace moves between avo and FlashInfer-Bench / SOL-ExecBench without
conversion. avo's own additions (tolerance, SOL model, in-place inputs, per-workload dtypes, SOL
fields in the evaluation) are extra keys that flashinfer-bench ignores when it loads our JSON.
"""
from __future__ import annotations

import ast
import math
from enum import Enum
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

DTYPE_NAMES = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float4_e2m1",
               "int64", "int32", "int16", "int8", "bool")
DType = Literal["float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float4_e2m1",
                "int64", "int32", "int16", "int8", "bool"]


class AvoModel(BaseModel):
    # Unknown keys are kept (not dropped) so foreign JSON round-trips through avo losslessly.
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class AxisConst(AvoModel):
    type: Literal["const"] = "const"
    value: int = Field(ge=0)
    description: Optional[str] = None


class AxisVar(AvoModel):
    type: Literal["var"] = "var"
    description: Optional[str] = None


class TensorSpec(AvoModel):
    shape: Optional[list[str]]  # axis names; None = scalar
    dtype: DType
    description: Optional[str] = None


class Tolerance(AvoModel):
    """An element passes when |out - ref| <= atol + rtol * |ref|; a workload passes when at least
    `matched_ratio` of the elements pass and no element is NaN where the reference is finite."""
    atol: float = 1e-2
    rtol: float = 1e-2
    matched_ratio: float = Field(default=1.0, ge=0.0, le=1.0)


class SolModel(AvoModel):
    """Work per workload as Python expressions over the axes, the scalar inputs, and for each
    tensor `isz_<name>` (bytes per element) and `numel_<name>`. Missing flops/bytes are derived
    from the reference (FLOP counter on meta tensors, unique input + output bytes)."""
    flops: Optional[str] = None
    bytes: Optional[str] = None
    compute_dtype: DType = "bfloat16"  # which tensor-core peak bounds the FLOPs


class Definition(AvoModel):
    name: str = Field(min_length=1)
    op_type: str = Field(min_length=1)
    axes: dict[str, Union[AxisConst, AxisVar]]
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

    @model_validator(mode="after")
    def _check(self) -> "Definition":
        try:
            mod = ast.parse(self.reference)
        except SyntaxError as e:
            raise ValueError(f"reference is not valid Python: {e}") from e
        if not any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in mod.body):
            raise ValueError("reference must define a top-level function `run`")
        if set(self.inputs) & set(self.outputs):
            raise ValueError("input and output names must not overlap")
        for tname, spec in {**self.inputs, **self.outputs}.items():
            for ax in spec.shape or []:
                if ax not in self.axes:
                    raise ValueError(f"tensor {tname!r} references undefined axis {ax!r}")
        for name in self.inplace:
            if name not in self.inputs:
                raise ValueError(f"inplace names {name!r}, which is not an input")
        if not self.outputs and not self.inplace:
            raise ValueError("a definition needs outputs or inplace inputs")
        return self

    @property
    def const_axes(self) -> dict[str, int]:
        return {k: a.value for k, a in self.axes.items() if isinstance(a, AxisConst)}

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


InputSpec = Union[RandomInput, ScalarInput, SafetensorsInput]


class Workload(AvoModel):
    axes: dict[str, int]
    inputs: dict[str, InputSpec]
    uuid: str = Field(min_length=1)
    # avo extensions: dtype overrides per tensor; `cpu` workloads are small enough for the
    # Triton interpreter; GPU workloads are the real shapes.
    dtypes: dict[str, DType] = Field(default_factory=dict)
    target: Literal["gpu", "cpu"] = "gpu"
    label: Optional[str] = None

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


class BuildSpec(AvoModel):
    language: Literal["python", "triton", "cpp", "cuda", "tilelang"]
    target_hardware: list[str] = Field(min_length=1)
    entry_point: str
    dependencies: list[str] = Field(default_factory=list)
    destination_passing_style: bool = True

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
    sm_clock_mhz_before: Optional[int] = None
    sm_clock_mhz_after: Optional[int] = None
    throttle_reasons: list[str] = Field(default_factory=list)
    throttled: bool = False


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
