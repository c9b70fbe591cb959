//! Reverse-mode autograd. Every op that sees an input requiring a gradient records a `Node`: its inputs
//! and a closure mapping the output's gradient to the inputs' gradients. `backward` walks the nodes in
//! reverse topological order and accumulates gradients on leaves. Each node is taken out of its tensor as
//! it is used, so the graph is freed during backward and memory stays flat across training steps.

use crate::{Error, Result, Tensor};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Maps the gradient of an op's output to the gradients of its inputs (None where an input needs none).
pub(crate) type BackwardFn = dyn Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync;

pub(crate) struct Node {
    pub name: &'static str,
    pub inputs: Vec<Tensor>,
    pub backward: Box<BackwardFn>,
}

/// Runs on a leaf right after a backward pass has added its final gradient for that pass (PyTorch's
/// post-accumulate-grad hook). Data-parallel training starts a bucket's all-reduce from here.
pub type GradHook = dyn Fn(&Tensor) -> Result<()> + Send + Sync;

/// Runs once when the backward pass that queued it has finished with every node.
pub type BackwardCallback = Box<dyn FnOnce() -> Result<()>>;

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
    static END_CALLBACKS: RefCell<Vec<BackwardCallback>> = const { RefCell::new(Vec::new()) };
}

/// Counts backward passes, so hooks can tell one pass from the next (and forget the state of a pass
/// that failed half way).
static BACKWARD_PASSES: AtomicU64 = AtomicU64::new(0);

/// The number of the backward pass running now (or the last one), starting at 1.
pub fn current_backward_pass() -> u64 {
    BACKWARD_PASSES.load(Ordering::Relaxed)
}

/// Queues `f` to run on this thread when the running backward pass ends (called from inside a hook);
/// an error it returns becomes the error of `backward()`. Queued callbacks of a failed pass are dropped.
pub fn queue_backward_callback(f: BackwardCallback) {
    END_CALLBACKS.with(|c| c.borrow_mut().push(f));
}

fn run_end_callbacks(ok: bool) -> Result<()> {
    let queued = END_CALLBACKS.with(|c| std::mem::take(&mut *c.borrow_mut()));
    if !ok {
        return Ok(());
    }
    // Like the pass itself, what runs at its end records no graph.
    let _no_grad = NoGradGuard::new();
    for f in queued {
        f()?;
    }
    Ok(())
}

pub(crate) fn run_grad_hooks(hooks: &[Arc<GradHook>], t: &Tensor) -> Result<()> {
    hooks.iter().try_for_each(|h| h(t))
}

/// Whether ops record the graph on this thread now.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// While alive, ops on this thread record no graph (evaluation, optimizer updates, backward itself).
pub struct NoGradGuard {
    prev: bool,
}

impl NoGradGuard {
    pub fn new() -> Self {
        let prev = GRAD_ENABLED.with(|g| g.replace(false));
        NoGradGuard { prev }
    }
}

impl Default for NoGradGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.prev));
    }
}

/// Runs `f` without recording the graph.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _g = NoGradGuard::new();
    f()
}

/// Attaches a backward rule to a freshly computed `out` if grad mode is on and any input needs a gradient.
/// The rule must not capture `out` itself (that would be a cycle); capture `out.detach()` instead.
pub(crate) fn record(
    out: Tensor,
    name: &'static str,
    inputs: &[&Tensor],
    backward: impl Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
) -> Tensor {
    if !is_grad_enabled() || !inputs.iter().any(|t| t.requires_grad()) {
        return out;
    }
    let node = Node { name, inputs: inputs.iter().map(|t| (*t).clone()).collect(), backward: Box::new(backward) };
    out.attach_node(node);
    out
}

/// Runs backward from `root` with initial gradient `grad`, then the callbacks its hooks queued.
pub(crate) fn backward(root: &Tensor, grad: Tensor) -> Result<()> {
    BACKWARD_PASSES.fetch_add(1, Ordering::Relaxed);
    END_CALLBACKS.with(|c| c.borrow_mut().clear());
    let result = walk_graph(root, grad);
    let callbacks = run_end_callbacks(result.is_ok());
    result.and(callbacks)
}

fn walk_graph(root: &Tensor, grad: Tensor) -> Result<()> {
    if !root.requires_grad() {
        return Err(Error::invalid(
            "backward",
            "the tensor does not require grad: no input of the graph that made it requires grad",
        ));
    }
    // Topological order by iterative DFS over tensors that still hold nodes.
    let mut order: Vec<Tensor> = Vec::new();
    let mut seen: HashMap<usize, bool> = HashMap::new();
    let mut stack: Vec<(Tensor, bool)> = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if seen.contains_key(&t.id()) {
            continue;
        }
        seen.insert(t.id(), true);
        let inputs = t.node_inputs();
        stack.push((t, true));
        for i in inputs {
            if i.requires_grad() && !seen.contains_key(&i.id()) {
                stack.push((i, false));
            }
        }
    }
    let _no_grad = NoGradGuard::new();
    let mut grads: HashMap<usize, Tensor> = HashMap::new();
    grads.insert(root.id(), grad);
    for t in order.iter().rev() {
        let Some(g) = grads.remove(&t.id()) else { continue };
        if t.is_leaf() {
            // Every contribution to this leaf has been summed into `g` by now (reverse topological
            // order), so its gradient for this pass is final and its hooks may act on it.
            t.accumulate_grad(&g)?;
            run_grad_hooks(&t.grad_hooks(), t)?;
            continue;
        }
        let Some(node) = t.take_node() else {
            return Err(Error::invalid(
                "backward",
                "the graph through this tensor was already freed by an earlier backward; run the forward pass again",
            ));
        };
        let input_grads = (node.backward)(&g)?;
        for (inp, ig) in node.inputs.iter().zip(input_grads) {
            let Some(ig) = ig else { continue };
            if !inp.requires_grad() {
                continue;
            }
            if ig.dims() != inp.dims() {
                return Err(Error::shape(
                    node.name,
                    format!(
                        "backward produced a gradient of shape {:?} for an input of shape {:?}",
                        ig.dims(),
                        inp.dims()
                    ),
                ));
            }
            let acc = match grads.remove(&inp.id()) {
                Some(prev) => prev.add(&ig)?,
                None => ig,
            };
            grads.insert(inp.id(), acc);
        }
    }
    Ok(())
}
