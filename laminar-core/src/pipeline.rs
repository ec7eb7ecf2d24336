//! The operator tree of one continuous query.
//!
//! A query is a tree: leaves read a source or stream, a join node combines two subtrees, a union
//! node any number of them, and each node has a chain of operators on top. A batch of input `x`
//! enters every leaf that reads `x` (a self-join reads it twice: left first, then right, which is
//! what makes the delta of a join exact; a self-union likewise passes it once per input, in input
//! order), flows up through its chain, into the join or union above (as that node's input `i`),
//! and so on to the root. Watermarks visit children before their parents, so the rows a window
//! close releases below a join reach it before the join evicts state at the same watermark. The
//! query has one watermark, the minimum over every relation it reads (joins and unions alike).

use datafusion::arrow::record_batch::RecordBatch;

use crate::error::Result;
use crate::operator::{OpCtx, Operator};

pub(crate) enum NodeInput {
    Relation(String),
    Join {
        join: Box<dyn Operator>,
        left: Box<Node>,
        right: Box<Node>,
    },
    /// `UNION ALL`: the output of input `i` enters `union` as its side `i`.
    Union {
        union: Box<dyn Operator>,
        inputs: Vec<Node>,
    },
}

pub(crate) struct Node {
    pub input: NodeInput,
    pub ops: Vec<Box<dyn Operator>>,
    /// What each operator of this node did (EXPLAIN ANALYZE, metrics).
    pub stats: NodeStats,
}

/// Counters of one operator: rows in and out, and time spent in it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OpStats {
    pub rows_in: u64,
    pub rows_out: u64,
    pub busy_ns: u64,
}

/// Counters of a node: one per operator of its chain (grown as needed), and one for its join
/// or union.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeStats {
    pub ops: Vec<OpStats>,
    pub input: OpStats,
}

fn stat(stats: &mut Vec<OpStats>, i: usize) -> &mut OpStats {
    if stats.len() <= i {
        stats.resize(i + 1, OpStats::default());
    }
    &mut stats[i]
}

fn rows(batches: &[RecordBatch]) -> u64 {
    batches.iter().map(|b| b.num_rows() as u64).sum()
}

/// Runs `f` (an operator's work), counting its time and the rows it produced into `st`.
fn timed(st: &mut OpStats, rows_in: u64, f: impl FnOnce() -> Result<Vec<RecordBatch>>) -> Result<Vec<RecordBatch>> {
    let t = std::time::Instant::now();
    let out = f()?;
    st.busy_ns += t.elapsed().as_nanos() as u64;
    st.rows_in += rows_in;
    st.rows_out += rows(&out);
    Ok(out)
}

/// Runs `batch` through `ops[from..]`.
pub(crate) fn run_chain(
    ops: &mut [Box<dyn Operator>],
    stats: &mut Vec<OpStats>,
    from: usize,
    batch: RecordBatch,
    ctx: &mut OpCtx<'_>,
) -> Result<Vec<RecordBatch>> {
    let mut cur = vec![batch];
    for (i, op) in ops.iter_mut().enumerate().skip(from) {
        let mut next = vec![];
        for b in cur {
            let n = b.num_rows() as u64;
            next.extend(timed(stat(stats, i), n, || op.process_batch(b, ctx))?);
            if let Some(limit) = ctx.memory_limit {
                let used = op.state_size();
                if used > limit {
                    return Err(crate::error::Error::new(
                        crate::error::ErrorKind::ResourceExhausted,
                        format!("state of {used} bytes exceeds memory_limit {limit} in operator {}", op.explain()),
                    ));
                }
            }
        }
        if next.is_empty() {
            return Ok(next);
        }
        cur = next;
    }
    Ok(cur)
}

fn run_all(
    ops: &mut [Box<dyn Operator>],
    stats: &mut Vec<OpStats>,
    batches: Vec<RecordBatch>,
    ctx: &mut OpCtx<'_>,
) -> Result<Vec<RecordBatch>> {
    let mut out = vec![];
    for b in batches {
        out.extend(run_chain(ops, stats, 0, b, ctx)?);
    }
    Ok(out)
}

/// Lets each operator of a chain react (watermark or tick), running what it releases through the
/// rest of the chain.
fn react(
    ops: &mut [Box<dyn Operator>],
    stats: &mut Vec<OpStats>,
    ctx: &mut OpCtx<'_>,
    f: &mut dyn FnMut(&mut dyn Operator, &mut OpCtx<'_>) -> Result<Vec<RecordBatch>>,
) -> Result<Vec<RecordBatch>> {
    let mut out = vec![];
    for i in 0..ops.len() {
        let produced = timed(stat(stats, i), 0, || f(ops[i].as_mut(), ctx))?;
        for b in produced {
            out.extend(run_chain(ops, stats, i + 1, b, ctx)?);
        }
    }
    Ok(out)
}

impl Node {
    pub(crate) fn leaf(name: String) -> Node {
        Node { input: NodeInput::Relation(name), ops: vec![], stats: NodeStats::default() }
    }

    /// The relations read, left to right (a relation read twice appears twice).
    pub(crate) fn inputs(&self) -> Vec<String> {
        match &self.input {
            NodeInput::Relation(n) => vec![n.clone()],
            NodeInput::Join { left, right, .. } => {
                let mut v = left.inputs();
                v.extend(right.inputs());
                v
            }
            NodeInput::Union { inputs, .. } => inputs.iter().flat_map(|n| n.inputs()).collect(),
        }
    }

    /// Feeds a batch of relation `from`; returns the root's output.
    pub(crate) fn process(&mut self, from: &str, batch: &RecordBatch, ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        let produced = match &mut self.input {
            NodeInput::Relation(n) => {
                if n != from {
                    return Ok(vec![]);
                }
                vec![batch.clone()]
            }
            NodeInput::Join { join, left, right } => {
                let st = &mut self.stats.input;
                let l = left.process(from, batch, ctx)?;
                let mut out = vec![];
                for b in l {
                    let n = b.num_rows() as u64;
                    out.extend(timed(st, n, || join.process_side(0, b, ctx))?);
                }
                let r = right.process(from, batch, ctx)?;
                for b in r {
                    let n = b.num_rows() as u64;
                    out.extend(timed(st, n, || join.process_side(1, b, ctx))?);
                }
                out
            }
            NodeInput::Union { union, inputs } => {
                let st = &mut self.stats.input;
                let mut out = vec![];
                for (i, n) in inputs.iter_mut().enumerate() {
                    for b in n.process(from, batch, ctx)? {
                        let rows = b.num_rows() as u64;
                        out.extend(timed(st, rows, || union.process_side(i, b, ctx))?);
                    }
                }
                out
            }
        };
        run_all(&mut self.ops, &mut self.stats.ops, produced, ctx)
    }

    pub(crate) fn on_watermark(&mut self, wm: i64, ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        self.react(ctx, &mut |op, ctx| op.on_watermark(wm, ctx))
    }

    pub(crate) fn on_tick(&mut self, ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        self.react(ctx, &mut |op, ctx| op.on_tick(ctx))
    }

    /// Lets every operator of the tree react (`f`: its watermark or tick hook), children first:
    /// what a child releases enters the join above it before the join reacts itself.
    fn react(
        &mut self,
        ctx: &mut OpCtx<'_>,
        f: &mut dyn FnMut(&mut dyn Operator, &mut OpCtx<'_>) -> Result<Vec<RecordBatch>>,
    ) -> Result<Vec<RecordBatch>> {
        let mut out = match &mut self.input {
            NodeInput::Relation(_) => vec![],
            NodeInput::Join { join, left, right } => {
                let st = &mut self.stats.input;
                let mut rows = vec![];
                for b in left.react(ctx, f)? {
                    let n = b.num_rows() as u64;
                    rows.extend(timed(st, n, || join.process_side(0, b, ctx))?);
                }
                for b in right.react(ctx, f)? {
                    let n = b.num_rows() as u64;
                    rows.extend(timed(st, n, || join.process_side(1, b, ctx))?);
                }
                rows.extend(timed(st, 0, || f(join.as_mut(), ctx))?);
                run_all(&mut self.ops, &mut self.stats.ops, rows, ctx)?
            }
            NodeInput::Union { union, inputs } => {
                let st = &mut self.stats.input;
                let mut rows = vec![];
                for (i, n) in inputs.iter_mut().enumerate() {
                    for b in n.react(ctx, f)? {
                        let r = b.num_rows() as u64;
                        rows.extend(timed(st, r, || union.process_side(i, b, ctx))?);
                    }
                }
                rows.extend(timed(st, 0, || f(union.as_mut(), ctx))?);
                run_all(&mut self.ops, &mut self.stats.ops, rows, ctx)?
            }
        };
        out.extend(react(&mut self.ops, &mut self.stats.ops, ctx, f)?);
        Ok(out)
    }

    /// Every operator, children before parents (a stable order for snapshots).
    pub(crate) fn operators(&self) -> Vec<&dyn Operator> {
        self.operator_stats().into_iter().map(|(o, _)| o).collect()
    }

    pub(crate) fn operators_mut(&mut self) -> Vec<&mut dyn Operator> {
        let mut v: Vec<&mut dyn Operator> = vec![];
        let Node { input, ops, .. } = self;
        match input {
            NodeInput::Relation(_) => {}
            NodeInput::Join { join, left, right } => {
                v.extend(left.operators_mut());
                v.extend(right.operators_mut());
                v.push(join.as_mut());
            }
            NodeInput::Union { union, inputs } => {
                for n in inputs {
                    v.extend(n.operators_mut());
                }
                v.push(union.as_mut());
            }
        }
        v.extend(ops.iter_mut().map(|o| o.as_mut() as &mut dyn Operator));
        v
    }

    /// Every operator with its counters, in the order of [`Node::operators`].
    pub(crate) fn operator_stats(&self) -> Vec<(&dyn Operator, OpStats)> {
        let mut v: Vec<(&dyn Operator, OpStats)> = vec![];
        match &self.input {
            NodeInput::Relation(_) => {}
            NodeInput::Join { join, left, right } => {
                v.extend(left.operator_stats());
                v.extend(right.operator_stats());
                v.push((join.as_ref(), self.stats.input));
            }
            NodeInput::Union { union, inputs } => {
                for n in inputs {
                    v.extend(n.operator_stats());
                }
                v.push((union.as_ref(), self.stats.input));
            }
        }
        for (i, o) in self.ops.iter().enumerate() {
            v.push((o.as_ref(), self.stats.ops.get(i).copied().unwrap_or_default()));
        }
        v
    }

    /// EXPLAIN lines, the root first, children indented below their parent: (depth, text, the
    /// operator and its counters; None for an input relation).
    pub(crate) fn explain_analyzed<'a>(
        &'a self,
        depth: usize,
        lines: &mut Vec<(usize, String, Option<(&'a dyn Operator, OpStats)>)>,
    ) {
        let mut d = depth;
        for (i, op) in self.ops.iter().enumerate().rev() {
            lines.push((d, op.explain(), Some((op.as_ref(), self.stats.ops.get(i).copied().unwrap_or_default()))));
            d += 1;
        }
        match &self.input {
            NodeInput::Relation(n) => lines.push((d, format!("Input: {n}"), None)),
            NodeInput::Join { join, left, right } => {
                lines.push((d, join.explain(), Some((join.as_ref(), self.stats.input))));
                left.explain_analyzed(d + 1, lines);
                right.explain_analyzed(d + 1, lines);
            }
            NodeInput::Union { union, inputs } => {
                lines.push((d, union.explain(), Some((union.as_ref(), self.stats.input))));
                for n in inputs {
                    n.explain_analyzed(d + 1, lines);
                }
            }
        }
    }

    /// EXPLAIN lines, the root first, children indented below their parent.
    pub(crate) fn explain(&self, depth: usize, lines: &mut Vec<String>) {
        let mut v = vec![];
        self.explain_analyzed(depth, &mut v);
        lines.extend(v.into_iter().map(|(d, line, _)| format!("{}{line}", "  ".repeat(d))));
    }
}
