//! The vocabulary of a pruning run, written once: every method, pattern and
//! refiner name, every parameter with its default, which statistics each
//! method reads, and how a run is described in `sparsity.json`. The bindings,
//! the CLI and both engines read it from here; nothing above restates it.
//!
//! Parameters arrive by name ([`Params`]); each builder reads the ones it
//! knows through a [`ParamReader`], which fills in the defaults, checks the
//! types, records the effective values for the manifest, and rejects any name
//! the builder did not ask for. Building with no parameters yields the schema
//! (names, defaults, docs) that [`vocabulary`] exports.

use crate::dsnot::{Decision, Dsnot, OnReject, R2Dsnot, RiPhase};
use crate::error::{Error, Result};
use crate::mask::{check_sparsity, Pattern};
use crate::score::Score;
use crate::swaps::Swaps;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;

/// The method used when none is named.
pub const DEFAULT_METHOD: &str = "wanda";
/// The unstructured sparsity used when none is given.
pub const DEFAULT_SPARSITY: f64 = 0.5;

/// One parameter value, as a caller gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Text(s) => write!(f, "{s:?}"),
        }
    }
}

impl From<&ParamValue> for Value {
    fn from(v: &ParamValue) -> Value {
        match v {
            ParamValue::Bool(b) => (*b).into(),
            ParamValue::Int(i) => (*i).into(),
            ParamValue::Float(f) => (*f).into(),
            ParamValue::Text(s) => s.as_str().into(),
        }
    }
}

/// Parameters by name.
pub type Params = BTreeMap<String, ParamValue>;

/// A parameter's name, default and meaning, for help texts and the CLI.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: &'static str,
    /// `null` where the default depends on the input (e.g. DSnoT's `same_sign`).
    pub default: Value,
    pub kind: &'static str,
    pub doc: &'static str,
    /// The allowed values of a choice parameter.
    pub choices: Vec<String>,
}

/// Reads the parameters of one method or refiner (see the module docs).
pub struct ParamReader<'a> {
    owner: &'a str,
    given: &'a Params,
    effective: Map<String, Value>,
    schema: Vec<ParamSpec>,
}

impl<'a> ParamReader<'a> {
    pub fn new(owner: &'a str, given: &'a Params) -> Self {
        ParamReader {
            owner,
            given,
            effective: Map::new(),
            schema: Vec::new(),
        }
    }

    fn arg(&self, name: &str) -> String {
        format!("{}: {name}", self.owner)
    }

    fn read<T: Clone + Into<Value>>(
        &mut self,
        spec: ParamSpec,
        default: T,
        parse: impl FnOnce(&ParamValue) -> Option<T>,
    ) -> Result<T> {
        let value = match self.given.get(spec.name) {
            Some(v) => parse(v).ok_or_else(|| {
                Error::invalid(self.arg(spec.name), format!("{v} must be a {}", spec.kind))
            })?,
            None => default,
        };
        self.effective
            .insert(spec.name.into(), value.clone().into());
        self.schema.push(spec);
        Ok(value)
    }

    fn spec(
        name: &'static str,
        default: Value,
        kind: &'static str,
        doc: &'static str,
    ) -> ParamSpec {
        ParamSpec {
            name,
            default,
            kind,
            doc,
            choices: Vec::new(),
        }
    }

    /// A finite real number (integers accepted).
    pub fn float(&mut self, name: &'static str, default: f64, doc: &'static str) -> Result<f64> {
        let spec = Self::spec(name, default.into(), "number", doc);
        self.read(spec, default, |v| match *v {
            ParamValue::Float(f) if f.is_finite() => Some(f),
            ParamValue::Int(i) => Some(i as f64),
            _ => None,
        })
    }

    /// A finite real number `>= min`.
    pub fn float_at_least(
        &mut self,
        name: &'static str,
        default: f64,
        min: f64,
        doc: &'static str,
    ) -> Result<f64> {
        let kind = if min == 0.0 {
            "number >= 0"
        } else {
            "number >= its minimum"
        };
        let spec = Self::spec(name, default.into(), kind, doc);
        self.read(spec, default, |v| match *v {
            ParamValue::Float(f) if f.is_finite() && f >= min => Some(f),
            ParamValue::Int(i) if i as f64 >= min => Some(i as f64),
            _ => None,
        })
    }

    /// A whole number `>= min` (0 or 1).
    pub fn count(
        &mut self,
        name: &'static str,
        default: usize,
        min: usize,
        doc: &'static str,
    ) -> Result<usize> {
        let kind = if min == 0 {
            "whole number >= 0"
        } else {
            "whole number >= 1"
        };
        let spec = Self::spec(name, (default as u64).into(), kind, doc);
        let value = self.read(spec, default as u64, |v| match *v {
            ParamValue::Int(i) => u64::try_from(i).ok().filter(|&i| i >= min as u64),
            _ => None,
        })?;
        usize::try_from(value).map_err(|_| Error::invalid(self.arg(name), "is too large"))
    }

    /// A seed (any non-negative integer).
    pub fn seed(&mut self, name: &'static str, default: u64, doc: &'static str) -> Result<u64> {
        let spec = Self::spec(name, default.into(), "whole number >= 0", doc);
        self.read(spec, default, |v| match *v {
            ParamValue::Int(i) => u64::try_from(i).ok(),
            _ => None,
        })
    }

    /// A switch.
    pub fn flag(&mut self, name: &'static str, default: bool, doc: &'static str) -> Result<bool> {
        let spec = Self::spec(name, default.into(), "boolean", doc);
        self.read(spec, default, |v| match *v {
            ParamValue::Bool(b) => Some(b),
            _ => None,
        })
    }

    /// A switch whose default depends on the input (`None`).
    pub fn maybe_flag(&mut self, name: &'static str, doc: &'static str) -> Result<Option<bool>> {
        let spec = Self::spec(name, Value::Null, "boolean", doc);
        self.read(spec, None, |v| match *v {
            ParamValue::Bool(b) => Some(Some(b)),
            _ => None,
        })
    }

    /// One of the names of `T` ([`Named`]).
    pub fn choice<T: Named>(
        &mut self,
        name: &'static str,
        default: T,
        doc: &'static str,
    ) -> Result<T> {
        let mut spec = Self::spec(name, default.to_string().into(), "choice", doc);
        spec.choices = T::NAMES.iter().map(|s| s.to_string()).collect();
        let owner = self.arg(name);
        let value = match self.given.get(name) {
            Some(ParamValue::Text(s)) => s.parse::<T>().map_err(|e| e.in_arg(&owner))?,
            Some(other) => {
                return Err(Error::invalid(
                    owner,
                    format!("{other} is not one of {}", T::NAMES.join(", ")),
                ))
            }
            None => default,
        };
        self.effective.insert(name.into(), value.to_string().into());
        self.schema.push(spec);
        Ok(value)
    }

    /// The effective values and the schema; fails on a parameter nobody read.
    pub fn finish(self) -> Result<(Map<String, Value>, Vec<ParamSpec>)> {
        let unknown: Vec<&str> = self
            .given
            .keys()
            .map(String::as_str)
            .filter(|k| !self.effective.contains_key(*k))
            .collect();
        if !unknown.is_empty() {
            let allowed: Vec<&str> = self.schema.iter().map(|s| s.name).collect();
            return Err(Error::invalid(
                self.owner,
                format!(
                    "unknown parameter{} {}; {} takes {}",
                    if unknown.len() > 1 { "s" } else { "" },
                    unknown.join(", "),
                    self.owner,
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                ),
            ));
        }
        Ok((self.effective, self.schema))
    }
}

/// An enum spelled by a fixed list of lower-case names.
pub trait Named: FromStr<Err = Error> + Display + Copy {
    const NAMES: &'static [&'static str];
}

/// Parses `text` as one of `names`, in the order of `values`.
pub(crate) fn parse_named<T: Copy>(
    what: &str,
    text: &str,
    names: &[&str],
    values: &[T],
) -> Result<T> {
    names
        .iter()
        .position(|n| *n == text)
        .map(|k| values[k])
        .ok_or_else(|| Error::invalid(what, format!("{text:?} is not one of {}", names.join(", "))))
}

impl Error {
    /// The same error reported for `arg` (a choice parsed inside a parameter).
    fn in_arg(self, arg: &str) -> Error {
        match self {
            Error::InvalidArgument { msg, .. } => Error::invalid(arg, msg),
            other => other,
        }
    }
}

/// SparseGPT's parameters (methods.md §6).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseGptParams {
    pub blocksize: usize,
    pub percdamp: f64,
}

/// A method: a score (then a mask) or SparseGPT.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    Score(Score),
    SparseGpt(SparseGptParams),
}

impl Method {
    /// Every method name, scores first.
    pub const NAMES: [&'static str; 9] = [
        "magnitude",
        "wanda",
        "ria",
        "lp-ria",
        "stochria",
        "symmetric",
        "symwanda",
        "owanda",
        "sparsegpt",
    ];

    /// The method called `name` with `params` (see [`ParamReader`]).
    pub fn new(name: &str, params: &Params) -> Result<(Method, Map<String, Value>)> {
        let (method, effective, _) = Self::build(name, params)?;
        Ok((method, effective))
    }

    fn build(name: &str, params: &Params) -> Result<(Method, Map<String, Value>, Vec<ParamSpec>)> {
        let mut p = ParamReader::new(name, params);
        let a = |p: &mut ParamReader| p.float("a", 0.5, "RIA's activation exponent");
        let method = match name {
            "magnitude" => Method::Score(Score::Magnitude),
            "wanda" => Method::Score(Score::Wanda),
            "ria" => Method::Score(Score::Ria { a: a(&mut p)? }),
            "lp-ria" => Method::Score(Score::LpRia {
                p: p.float("p", 2.0, "the lp norm of the row and column (p = 1 is ria)")?,
                a: a(&mut p)?,
            }),
            "stochria" => Method::Score(Score::StochRia {
                beta: p.float("beta", 0.1, "fraction of each row/column sampled")?,
                seed: p.seed("seed", 0, "seed of the subsets (with the tensor name)")?,
                activation: p.flag("activation", true, "multiply by the activation factor")?,
                a: a(&mut p)?,
            }),
            "symmetric" => Method::Score(Score::Symmetric),
            "symwanda" => Method::Score(Score::SymWanda {
                lambda: p.float("lambda", 1.0, "weight of the output side")?,
            }),
            "owanda" => Method::Score(Score::OWanda),
            "sparsegpt" => Method::SparseGpt(SparseGptParams {
                blocksize: p.count("blocksize", 128, 1, "columns per lazy-update block")?,
                percdamp: p.float_at_least(
                    "percdamp",
                    0.01,
                    0.0,
                    "damping, a fraction of mean(diag H)",
                )?,
            }),
            other => {
                return Err(Error::invalid(
                    "method",
                    format!("{other:?} is not one of {}", Self::NAMES.join(", ")),
                ))
            }
        };
        let (effective, schema) = p.finish()?;
        Ok((method, effective, schema))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Method::Score(s) => s.name(),
            Method::SparseGpt(_) => "sparsegpt",
        }
    }

    /// Which activation statistics the method reads: (inputs, outputs).
    pub fn needs_stats(&self) -> (bool, bool) {
        match self {
            Method::Score(s) => s.needs_stats(),
            Method::SparseGpt(_) => (false, false),
        }
    }

    /// Whether the method reads the inputs' Hessian (Gram matrix).
    pub fn needs_hessian(&self) -> bool {
        matches!(self, Method::SparseGpt(_))
    }

    /// Whether the method changes the weights it keeps.
    pub fn updates_weights(&self) -> bool {
        matches!(self, Method::SparseGpt(_))
    }

    /// Whether the method needs no calibration at all.
    pub fn data_free(&self) -> bool {
        self.needs_stats() == (false, false) && !self.needs_hessian()
    }
}

/// A mask refinement after the initial method.
#[derive(Debug, Clone, PartialEq)]
pub enum Refiner {
    Dsnot(Dsnot),
    R2Dsnot(R2Dsnot),
    /// Exact-objective swaps (methods.md §9).
    Swaps(Swaps),
}

impl Refiner {
    pub const NAMES: [&'static str; 3] = ["dsnot", "r2dsnot", "swaps"];

    /// The refiner called `name` with `params` (see [`ParamReader`]).
    pub fn new(name: &str, params: &Params) -> Result<(Refiner, Map<String, Value>)> {
        let (refiner, effective, _) = Self::build(name, params)?;
        Ok((refiner, effective))
    }

    fn build(name: &str, params: &Params) -> Result<(Refiner, Map<String, Value>, Vec<ParamSpec>)> {
        let mut p = ParamReader::new(name, params);
        let common = |p: &mut ParamReader, d: (usize, f64, f64)| -> Result<(usize, f64, f64)> {
            Ok((
                p.count("max_cycles", d.0, 0, "swap cycles at most")?,
                p.float(
                    "threshold",
                    d.1,
                    "a row stops at |err| <= this (units of seqlen x mean)",
                )?,
                p.float(
                    "var_power",
                    d.2,
                    "exponent of the variance in the grow score",
                )?,
            ))
        };
        let refiner = match name {
            "dsnot" => {
                let d = Dsnot::default();
                let (max_cycles, threshold, var_power) =
                    common(&mut p, (d.max_cycles, d.threshold, d.var_power))?;
                Refiner::Dsnot(Dsnot {
                    max_cycles,
                    threshold,
                    var_power,
                    same_sign: p.maybe_flag(
                        "same_sign",
                        "keep the error's sign (default: off unstructured, on for N:M)",
                    )?,
                })
            }
            "r2dsnot" => {
                let d = R2Dsnot::default();
                let (max_cycles, threshold, var_power) =
                    common(&mut p, (d.max_cycles, d.threshold, d.var_power))?;
                Refiner::R2Dsnot(R2Dsnot {
                    max_cycles,
                    threshold,
                    var_power,
                    ri_phase: p.choice(
                        "ri_phase",
                        d.ri_phase,
                        "where relative importance enters",
                    )?,
                    alpha: p.float("alpha", d.alpha, "activation exponent of the prune score")?,
                    gamma: p.float("gamma", d.gamma, "weight of the pruned-mass term of Phi")?,
                    p: p.float("p", d.p, "norm of the pruned mass")?,
                    same_sign: p.flag("same_sign", d.same_sign, "keep the error's sign")?,
                    on_reject: p.choice("on_reject", d.on_reject, "a row at a rejected swap")?,
                    decision: p.choice(
                        "decision",
                        d.decision,
                        "Phi's error term: mean |err| or the exact loss (needs the Gram matrix)",
                    )?,
                })
            }
            "swaps" => {
                let d = Swaps::default();
                Refiner::Swaps(Swaps {
                    candidates: p.count(
                        "candidates",
                        d.candidates,
                        1,
                        "kept and pruned candidates per row (per N:M group); >= in: full search",
                    )?,
                    max_swaps: p.count("max_swaps", d.max_swaps, 0, "swaps per row at most")?,
                    tol: p.float_at_least(
                        "tol",
                        d.tol,
                        0.0,
                        "apply a swap only if it lowers the row's loss by more than tol x loss",
                    )?,
                })
            }
            other => {
                return Err(Error::invalid(
                    "refine",
                    format!("{other:?} is not one of {}", Self::NAMES.join(", ")),
                ))
            }
        };
        let (effective, schema) = p.finish()?;
        Ok((refiner, effective, schema))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Refiner::Dsnot(_) => "dsnot",
            Refiner::R2Dsnot(_) => "r2dsnot",
            Refiner::Swaps(_) => "swaps",
        }
    }

    /// Whether the refiner reads the Gram matrix `H` of the layer's inputs
    /// (methods.md §9): `swaps`, and `r2dsnot` with `decision = exact`.
    pub fn needs_gram(&self) -> bool {
        match self {
            Refiner::Dsnot(_) => false,
            Refiner::R2Dsnot(r) => r.decision == Decision::Exact,
            Refiner::Swaps(_) => true,
        }
    }

    /// Whether the refiner reads the activation statistics `in_sq`, `sum`
    /// and `var` (methods.md §2): DSnoT and R²-DSnoT.
    pub fn needs_stats(&self) -> bool {
        !matches!(self, Refiner::Swaps(_))
    }

    /// Whether an N:M refinement picks inside a group by the initial
    /// method's scores (DSnoT) rather than by its own (R²-DSnoT, §7).
    pub fn uses_initial_scores(&self) -> bool {
        matches!(self, Refiner::Dsnot(_))
    }
}

impl Named for RiPhase {
    const NAMES: &'static [&'static str] = &["prune", "grow", "none"];
}

impl FromStr for RiPhase {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        parse_named(
            "ri_phase",
            s,
            Self::NAMES,
            &[RiPhase::Prune, RiPhase::Grow, RiPhase::None],
        )
    }
}

impl Display for RiPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Self::NAMES[*self as usize])
    }
}

impl Named for Decision {
    const NAMES: &'static [&'static str] = &["mean", "exact"];
}

impl FromStr for Decision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        parse_named(
            "decision",
            s,
            Self::NAMES,
            &[Decision::Mean, Decision::Exact],
        )
    }
}

impl Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Self::NAMES[*self as usize])
    }
}

impl Named for OnReject {
    const NAMES: &'static [&'static str] = &["stop", "skip"];
}

impl FromStr for OnReject {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        parse_named(
            "on_reject",
            s,
            Self::NAMES,
            &[OnReject::Stop, OnReject::Skip],
        )
    }
}

impl Display for OnReject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Self::NAMES[*self as usize])
    }
}

/// How a pruned checkpoint is stored: dense (zeros in place), or one of the
/// compressed-tensors sparse formats (docs/formats.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveFormat {
    Dense,
    /// `sparse-bitmask`: any sparsity; the nonzeros, a bitmask and row offsets.
    SparseBitmask,
    /// `sparse-24-bitmask`: 2:4 weights; two values of every four and a bitmask.
    Sparse24Bitmask,
}

impl SaveFormat {
    /// The format names, as compressed-tensors spells them.
    pub const NAMES: [&'static str; 3] = ["dense", "sparse-bitmask", "sparse-24-bitmask"];
    /// The format used when none is given.
    pub const DEFAULT: &'static str = "dense";
    /// The format `compress` writes when none is given.
    pub const DEFAULT_COMPRESSED: &'static str = "sparse-bitmask";

    /// The format called `name`.
    pub fn parse(name: &str) -> Result<SaveFormat> {
        match name.trim() {
            "dense" => Ok(SaveFormat::Dense),
            "sparse-bitmask" => Ok(SaveFormat::SparseBitmask),
            "sparse-24-bitmask" => Ok(SaveFormat::Sparse24Bitmask),
            other => Err(Error::invalid(
                "format",
                format!(
                    "{other:?} is not a save format; use one of {}",
                    Self::NAMES.join(", ")
                ),
            )),
        }
    }

    pub fn name(&self) -> &'static str {
        Self::NAMES[*self as usize]
    }
}

impl Display for SaveFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Pattern {
    /// The pattern names; `N:M` stands for any `n:m` such as `2:4`.
    pub const NAMES: [&'static str; 4] = ["per-row", "per-matrix", "adaptive", "N:M"];
    /// The pattern used when none is given.
    pub const DEFAULT: &'static str = "per-row";

    /// The pattern called `name` (`None`: the default) at `sparsity` (unused by N:M).
    pub fn parse(name: Option<&str>, sparsity: f64) -> Result<Pattern> {
        let name = name.unwrap_or(Self::DEFAULT).trim();
        let pattern = match name {
            "per-row" => Pattern::PerRow { sparsity },
            "per-matrix" => Pattern::PerMatrix { sparsity },
            "adaptive" => Pattern::AdaptivePerRow { sparsity },
            nm => {
                let parsed = nm.split_once(':').and_then(|(n, m)| {
                    Some((
                        n.trim().parse::<usize>().ok()?,
                        m.trim().parse::<usize>().ok()?,
                    ))
                });
                match parsed {
                    Some((n, m)) if 0 < n && n < m => Pattern::NM { n, m },
                    _ => {
                        return Err(Error::invalid(
                            "pattern",
                            format!(
                                "{nm:?} is not N:M with 0 < N < M (e.g. 2:4), nor per-row, \
                                 per-matrix or adaptive"
                            ),
                        ))
                    }
                }
            }
        };
        if let Some(s) = pattern.unstructured_sparsity() {
            check_sparsity(s)?;
        }
        Ok(pattern)
    }

    /// The target sparsity of an unstructured pattern (`None` for N:M).
    pub fn unstructured_sparsity(&self) -> Option<f64> {
        match *self {
            Pattern::PerRow { sparsity }
            | Pattern::PerMatrix { sparsity }
            | Pattern::AdaptivePerRow { sparsity } => Some(sparsity),
            Pattern::NM { .. } => None,
        }
    }

    /// The fraction of weights the pattern prunes (N/M for N:M).
    pub fn sparsity(&self) -> f64 {
        match *self {
            Pattern::NM { n, m } => n as f64 / m as f64,
            _ => self.unstructured_sparsity().unwrap_or_default(),
        }
    }
}

impl Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Pattern::PerRow { .. } => f.write_str("per-row"),
            Pattern::PerMatrix { .. } => f.write_str("per-matrix"),
            Pattern::AdaptivePerRow { .. } => f.write_str("adaptive"),
            Pattern::NM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

/// A validated pruning request: method, pattern and refinement, with the
/// effective parameters. Both engines take it whole and describe it the same
/// way in `sparsity.json` ([`Request::describe`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: Method,
    pub pattern: Pattern,
    pub refiner: Option<Refiner>,
    method_params: Map<String, Value>,
    refine_params: Map<String, Value>,
}

impl Request {
    /// Validates every name and parameter; `None` method / sparsity / pattern
    /// are the defaults. Parameters given for no refiner are an error.
    pub fn new(
        method: Option<&str>,
        method_params: &Params,
        pattern: Option<&str>,
        sparsity: Option<f64>,
        refine: Option<&str>,
        refine_params: &Params,
    ) -> Result<Request> {
        let (method, method_params) = Method::new(method.unwrap_or(DEFAULT_METHOD), method_params)?;
        let pattern = Pattern::parse(pattern, sparsity.unwrap_or(DEFAULT_SPARSITY))?;
        let (refiner, refine_params) = match refine {
            Some(name) => {
                let (r, p) = Refiner::new(name, refine_params)?;
                (Some(r), p)
            }
            None if !refine_params.is_empty() => {
                let names: Vec<&str> = refine_params.keys().map(String::as_str).collect();
                return Err(Error::invalid(
                    "refine",
                    format!("parameters {} given without a refinement", names.join(", ")),
                ));
            }
            None => (None, Map::new()),
        };
        Ok(Request {
            method,
            pattern,
            refiner,
            method_params,
            refine_params,
        })
    }

    /// Whether the Rust shard engine can run it alone: a score method (the
    /// weights kept as they are) and either a statistics file, which also
    /// serves any refinement (`symprune calibrate --gram` for the Gram
    /// matrix), or no data needed at all.
    pub fn runs_shard_by_shard(&self, with_stats_file: bool) -> bool {
        !self.method.updates_weights()
            && !self.method.needs_hessian()
            && (with_stats_file || (self.method.data_free() && self.refiner.is_none()))
    }

    /// The run's fields of `sparsity.json`: `method`, `parameters`, `pattern`,
    /// `sparsity` (the target), `refine`, `refine_parameters`.
    pub fn describe(&self) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("method".into(), self.method.name().into());
        out.insert(
            "parameters".into(),
            Value::Object(self.method_params.clone()),
        );
        out.insert("pattern".into(), self.pattern.to_string().into());
        out.insert("sparsity".into(), self.pattern.sparsity().into());
        out.insert(
            "refine".into(),
            self.refiner.as_ref().map(|r| r.name()).into(),
        );
        out.insert(
            "refine_parameters".into(),
            Value::Object(self.refine_params.clone()),
        );
        out
    }
}

fn schema_json(schema: &[ParamSpec]) -> Value {
    Value::Array(
        schema
            .iter()
            .map(|s| {
                json!({
                    "name": s.name, "default": s.default, "kind": s.kind,
                    "doc": s.doc, "choices": s.choices,
                })
            })
            .collect(),
    )
}

/// Everything above in one JSON value, for the bindings and help texts:
/// methods (with their parameters and needs), refiners, patterns, defaults.
pub fn vocabulary() -> Value {
    let none = Params::new();
    let methods: Map<String, Value> = Method::NAMES
        .iter()
        .map(|&name| {
            let (m, _, schema) = Method::build(name, &none).expect("defaults are valid");
            let (needs_in, needs_out) = m.needs_stats();
            let info = json!({
                "parameters": schema_json(&schema),
                "data_free": m.data_free(),
                "needs_in_stats": needs_in,
                "needs_out_stats": needs_out,
                "needs_hessian": m.needs_hessian(),
                "updates_weights": m.updates_weights(),
                "is_score": matches!(m, Method::Score(_)),
            });
            (name.to_string(), info)
        })
        .collect();
    let refiners: Map<String, Value> = Refiner::NAMES
        .iter()
        .map(|&name| {
            let (r, _, schema) = Refiner::build(name, &none).expect("defaults are valid");
            let info = json!({
                "parameters": schema_json(&schema),
                "uses_initial_scores": r.uses_initial_scores(),
                "needs_gram": r.needs_gram(),
                "needs_stats": r.needs_stats(),
            });
            (name.to_string(), info)
        })
        .collect();
    json!({
        "method_names": Method::NAMES,
        "methods": methods,
        "refiner_names": Refiner::NAMES,
        "refiners": refiners,
        "patterns": Pattern::NAMES,
        "default_method": DEFAULT_METHOD,
        "default_sparsity": DEFAULT_SPARSITY,
        "default_pattern": Pattern::DEFAULT,
        "save_formats": SaveFormat::NAMES,
        "default_save_format": SaveFormat::DEFAULT,
        "compressed_formats": SaveFormat::NAMES
            .iter()
            .filter(|n| SaveFormat::parse(n).is_ok_and(|f| f != SaveFormat::Dense))
            .collect::<Vec<_>>(),
        "default_compressed_format": SaveFormat::DEFAULT_COMPRESSED,
        "output_marker": crate::checkpoint::fsutil::MARKER_FILE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(items: &[(&str, ParamValue)]) -> Params {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn every_name_round_trips() {
        for name in Method::NAMES {
            let (m, _) = Method::new(name, &Params::new()).unwrap();
            assert_eq!(m.name(), name);
        }
        for name in Refiner::NAMES {
            let (r, _) = Refiner::new(name, &Params::new()).unwrap();
            assert_eq!(r.name(), name);
        }
        for name in ["per-row", "per-matrix", "adaptive", "2:4", "4:8"] {
            assert_eq!(Pattern::parse(Some(name), 0.5).unwrap().to_string(), name);
        }
        for name in RiPhase::NAMES {
            assert_eq!(name.parse::<RiPhase>().unwrap().to_string(), *name);
        }
        for name in OnReject::NAMES {
            assert_eq!(name.parse::<OnReject>().unwrap().to_string(), *name);
        }
        for name in Decision::NAMES {
            assert_eq!(name.parse::<Decision>().unwrap().to_string(), *name);
        }
    }

    #[test]
    fn lp_ria_defaults_to_p2_and_differs_from_ria() {
        let (m, effective) = Method::new("lp-ria", &Params::new()).unwrap();
        assert_eq!(m, Method::Score(Score::LpRia { p: 2.0, a: 0.5 }));
        assert_eq!(effective["p"], 2.0);
    }

    #[test]
    fn unknown_and_mistyped_parameters_are_errors() {
        let e = Method::new("wanda", &params(&[("a", ParamValue::Float(1.0))]))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "wanda: unknown parameter a; wanda takes none");
        let e = Method::new("ria", &params(&[("alpha", ParamValue::Float(1.0))]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown parameter alpha; ria takes a"), "{e}");
        let e = Method::new("ria", &params(&[("a", ParamValue::Text("x".into()))]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("ria: a: "), "{e}");
        let e = Refiner::new(
            "r2dsnot",
            &params(&[("ri_phase", ParamValue::Text("both".into()))]),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "r2dsnot: ri_phase: \"both\" is not one of prune, grow, none"
        );
        let e = Request::new(
            None,
            &Params::new(),
            None,
            None,
            None,
            &params(&[("gamma", ParamValue::Int(1))]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("without a refinement"), "{e}");
    }

    #[test]
    fn patterns_are_validated() {
        for bad in ["4:4", "0:4", "two:four", "rows", ""] {
            assert!(Pattern::parse(Some(bad), 0.5).is_err(), "{bad}");
        }
        assert!(Pattern::parse(None, 1.0).is_err());
        assert_eq!(
            Pattern::parse(Some(" 2 : 4 "), 0.0).unwrap(),
            Pattern::NM { n: 2, m: 4 }
        );
        assert_eq!(Pattern::parse(Some("2:4"), 0.3).unwrap().sparsity(), 0.5);
    }

    #[test]
    fn the_request_describes_itself_in_one_dialect() {
        let r = Request::new(
            Some("stochria"),
            &params(&[("seed", ParamValue::Int(3))]),
            Some("2:4"),
            None,
            Some("dsnot"),
            &Params::new(),
        )
        .unwrap();
        let d = r.describe();
        assert_eq!(d["method"], "stochria");
        assert_eq!(d["parameters"]["seed"], 3);
        assert_eq!(d["parameters"]["beta"], 0.1);
        assert_eq!(d["pattern"], "2:4");
        assert_eq!(d["sparsity"], 0.5);
        assert_eq!(d["refine"], "dsnot");
        assert_eq!(d["refine_parameters"]["max_cycles"], 50);
        assert!(r.runs_shard_by_shard(true) && !r.runs_shard_by_shard(false));
        let data_free_refined = Request::new(
            Some("magnitude"),
            &Params::new(),
            None,
            None,
            Some("swaps"),
            &Params::new(),
        )
        .unwrap();
        assert!(!data_free_refined.runs_shard_by_shard(false));
        assert!(data_free_refined.runs_shard_by_shard(true));
        let sparsegpt = Request::new(
            Some("sparsegpt"),
            &Params::new(),
            None,
            None,
            None,
            &Params::new(),
        )
        .unwrap();
        assert!(!sparsegpt.runs_shard_by_shard(true));
        let plain = Request::new(
            Some("magnitude"),
            &Params::new(),
            None,
            Some(0.6),
            None,
            &Params::new(),
        )
        .unwrap();
        assert!(plain.runs_shard_by_shard(false));
        let wanda = Request::new(None, &Params::new(), None, None, None, &Params::new()).unwrap();
        assert!(!wanda.runs_shard_by_shard(false) && wanda.runs_shard_by_shard(true));
    }

    #[test]
    fn the_vocabulary_lists_every_method_with_its_schema() {
        let v = vocabulary();
        assert_eq!(v["methods"].as_object().unwrap().len(), Method::NAMES.len());
        assert_eq!(v["methods"]["lp-ria"]["parameters"][0]["name"], "p");
        assert_eq!(v["methods"]["lp-ria"]["parameters"][0]["default"], 2.0);
        assert_eq!(v["methods"]["magnitude"]["data_free"], true);
        assert_eq!(v["methods"]["wanda"]["data_free"], false);
        assert_eq!(
            v["refiners"]["r2dsnot"]["parameters"][3]["choices"][1],
            "grow"
        );
        assert_eq!(v["default_method"], "wanda");
        assert_eq!(v["refiners"]["dsnot"]["uses_initial_scores"], true);
        assert_eq!(v["refiners"]["r2dsnot"]["uses_initial_scores"], false);
        for (name, gram, stats) in [
            ("dsnot", false, true),
            ("r2dsnot", false, true),
            ("swaps", true, false),
        ] {
            assert_eq!(v["refiners"][name]["needs_gram"], gram, "{name}");
            assert_eq!(v["refiners"][name]["needs_stats"], stats, "{name}");
        }
        let swaps = &v["refiners"]["swaps"]["parameters"];
        let names: Vec<&str> = (0..3).map(|k| swaps[k]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["candidates", "max_swaps", "tol"]);
        assert_eq!(swaps[0]["default"], 16);
        assert_eq!(swaps[1]["default"], 32);
        assert_eq!(swaps[2]["default"], 1e-6);
        let decision = &v["refiners"]["r2dsnot"]["parameters"][9];
        assert_eq!(decision["name"], "decision");
        assert_eq!(decision["default"], "mean");
        assert_eq!(decision["choices"], json!(["mean", "exact"]));
    }

    #[test]
    fn the_exact_decision_and_swaps_need_the_gram_matrix() {
        let exact = params(&[("decision", ParamValue::Text("exact".into()))]);
        let (r, effective) = Refiner::new("r2dsnot", &exact).unwrap();
        assert!(r.needs_gram() && r.needs_stats());
        assert_eq!(effective["decision"], "exact");
        let (r, effective) = Refiner::new("r2dsnot", &Params::new()).unwrap();
        assert!(!r.needs_gram());
        assert_eq!(effective["decision"], "mean");
        let given = params(&[
            ("candidates", ParamValue::Int(4)),
            ("tol", ParamValue::Int(0)),
        ]);
        let (r, effective) = Refiner::new("swaps", &given).unwrap();
        assert_eq!(
            r,
            Refiner::Swaps(Swaps {
                candidates: 4,
                max_swaps: 32,
                tol: 0.0
            })
        );
        assert!(r.needs_gram() && !r.needs_stats());
        assert_eq!(effective["max_swaps"], 32);
        let e = Refiner::new(
            "r2dsnot",
            &params(&[("decision", ParamValue::Text("l2".into()))]),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "r2dsnot: decision: \"l2\" is not one of mean, exact");
        let e = Refiner::new("swaps", &params(&[("gamma", ParamValue::Int(1))]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "swaps: unknown parameter gamma; swaps takes candidates, max_swaps, tol"
        );
    }
}
