//! The operator tree of one continuous query.
//!
//! A query is a tree: leaves read a source or stream, a join node combines two subtrees, and each
//! node has a chain of operators on top. A batch of input `x` enters every leaf that reads `x`
//! (a self-join reads it twice: left first, then right, which is what makes the delta of a join
//! exact), flows up through its chain, into the join above (as that join's left or right input),
//! and so on to the root. Watermarks visit children before their parents, so the rows a window
//! close releases below a join reach it before the join evicts state at the same watermark.

use datafusion::arrow::record_batch::RecordBatch;

use crate::error::Result;
use crate::operator::{OpCtx, Operator};

pub(crate) enum NodeInput {
    Relation(String),
    Join { join: Box<dyn Operator>, left: Box<Node>, right: Box<Node> },
}

pub(crate) struct Node {
    pub input: NodeInput,
    pub ops: Vec<Box<dyn Operator>>,
}

/// Runs `batch` through `ops[from..]`.
pub(crate) fn run_chain(ops: &mut [Box<dyn Operator>], from: usize, batch: RecordBatch, ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
    let mut cur = vec![batch];
    for op in ops[from..].iter_mut() {
        let mut next = vec![];
        for b in cur {
            next.extend(op.process_batch(b, ctx)?);
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

fn run_all(ops: &mut [Box<dyn Operator>], batches: Vec<RecordBatch>, ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
    let mut out = vec![];
    for b in batches {
        out.extend(run_chain(ops, 0, b, ctx)?);
    }
    Ok(out)
}

/// Lets each operator of a chain react (watermark or tick), running what it releases through the
/// rest of the chain.
fn react(
    ops: &mut [Box<dyn Operator>],
    ctx: &mut OpCtx<'_>,
    f: &mut dyn FnMut(&mut dyn Operator, &mut OpCtx<'_>) -> Result<Vec<RecordBatch>>,
) -> Result<Vec<RecordBatch>> {
    let mut out = vec![];
    for i in 0..ops.len() {
        let produced = f(ops[i].as_mut(), ctx)?;
        for b in produced {
            out.extend(run_chain(ops, i + 1, b, ctx)?);
        }
    }
    Ok(out)
}

impl Node {
    pub(crate) fn leaf(name: String) -> Node {
        Node { input: NodeInput::Relation(name), ops: vec![] }
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
                let l = left.process(from, batch, ctx)?;
                let mut out = vec![];
                for b in l {
                    out.extend(join.process_side(0, b, ctx)?);
                }
                let r = right.process(from, batch, ctx)?;
                for b in r {
                    out.extend(join.process_side(1, b, ctx)?);
                }
                out
            }
        };
        run_all(&mut self.ops, produced, ctx)
    }

    pub(crate) fn on_watermark(&mut self, wm: i64, ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        self.react(ctx, &mut |op, ctx| op.on_watermark(wm, ctx))
    }

    pub(crate) fn on_tick(&mut self, ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        self.react(ctx, &mut |op, ctx| op.on_tick(ctx))
    }

    /// Lets every operator of the tree react (`f`: its watermark or tick hook), children first:
    /// what a child releases enters the join above it before the join reacts itself.
    fn react(&mut self, ctx: &mut OpCtx<'_>, f: &mut dyn FnMut(&mut dyn Operator, &mut OpCtx<'_>) -> Result<Vec<RecordBatch>>) -> Result<Vec<RecordBatch>> {
        let mut out = match &mut self.input {
            NodeInput::Relation(_) => vec![],
            NodeInput::Join { join, left, right } => {
                let mut rows = vec![];
                for b in left.react(ctx, f)? {
                    rows.extend(join.process_side(0, b, ctx)?);
                }
                for b in right.react(ctx, f)? {
                    rows.extend(join.process_side(1, b, ctx)?);
                }
                rows.extend(f(join.as_mut(), ctx)?);
                run_all(&mut self.ops, rows, ctx)?
            }
        };
        out.extend(react(&mut self.ops, ctx, f)?);
        Ok(out)
    }

    /// Every operator, children before parents (a stable order for snapshots).
    pub(crate) fn operators(&self) -> Vec<&dyn Operator> {
        let mut v: Vec<&dyn Operator> = vec![];
        if let NodeInput::Join { join, left, right } = &self.input {
            v.extend(left.operators());
            v.extend(right.operators());
            v.push(join.as_ref());
        }
        v.extend(self.ops.iter().map(|o| o.as_ref()));
        v
    }

    pub(crate) fn operators_mut(&mut self) -> Vec<&mut dyn Operator> {
        let mut v: Vec<&mut dyn Operator> = vec![];
        let Node { input, ops } = self;
        if let NodeInput::Join { join, left, right } = input {
            v.extend(left.operators_mut());
            v.extend(right.operators_mut());
            v.push(join.as_mut());
        }
        v.extend(ops.iter_mut().map(|o| o.as_mut() as &mut dyn Operator));
        v
    }

    /// EXPLAIN lines, the root first, children indented below their parent.
    pub(crate) fn explain(&self, depth: usize, lines: &mut Vec<String>) {
        let mut d = depth;
        for op in self.ops.iter().rev() {
            lines.push(format!("{}{}", "  ".repeat(d), op.explain()));
            d += 1;
        }
        match &self.input {
            NodeInput::Relation(n) => lines.push(format!("{}Input: {n}", "  ".repeat(d))),
            NodeInput::Join { join, left, right } => {
                lines.push(format!("{}{}", "  ".repeat(d), join.explain()));
                left.explain(d + 1, lines);
                right.explain(d + 1, lines);
            }
        }
    }
}
