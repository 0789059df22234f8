//! After warm-up, `Pipeline::run_layer` allocates nothing of its own: a counting global
//! allocator (in this test binary only) counts the heap allocations made on the test's thread
//! while 100 layers of the sample build run through the default model, per backend.
//!
//! What is allowed, and why, is exactly what the dependencies do:
//! - the backend's `infer`: tract builds its input tensor and its outputs per run (a bounded,
//!   constant number of allocations per run, counted here by running `infer` alone); ONNX
//!   Runtime's Rust binding allocates a few small bookkeeping values per run (its C++ side uses
//!   its own arena, which a Rust global allocator does not see);
//! - `decide`: one `String` per rule that trips (the reasons shown to people), counted here by
//!   running `decide` alone on the same layer, on the test's thread only (where it runs). A PASS
//!   layer has none;
//! - fusion's hand-over to rayon's thread pool: a job handed in from outside the pool goes into
//!   its shared queue (crossbeam-deque's `Injector`), a linked list of blocks of 63 slots, which
//!   allocates the next block when one fills: one allocation per 63 layers, freed again once the
//!   pool has taken the jobs out, so it never grows. The worker threads themselves allocate
//!   nothing (every thread is counted).
//!
//! - a few allocations of the dependencies that depend on timing, not on the layer: with the
//!   cores shared (a test beside this one), the 1024 x 1024 model's 100 layers saw 0 to 3 more
//!   (82, 164 and 512 bytes; none with the cores idle, none with rayon on one thread), and
//!   tract's runs alone up to 3 more, and libtest's harness thread one when it notes that the
//!   test has run over 60 s. At most one per [`TIMING_SLACK_LAYERS`] layers is allowed: an
//!   allocation of the layer's own code happens on every layer (100 here) or on none.
//!
//! The test asserts that the whole layer allocates that and nothing more.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use appliance::config::Config;
use appliance::judge::decide::decide;
use appliance::judge::pipeline::Pipeline;
use appliance::model::{LoadedModel, Precision};
use image::DynamicImage;
use models::BackendChoice;

struct CountingAllocator;

/// Whether allocations are being counted, and how many were, on every thread of the process: the
/// layer hands fusion to rayon's worker threads, and what they allocate counts too.
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set while only this thread's allocations are counted (see [`allocations_on_this_thread_of`]).
    /// A `const` `Cell<bool>` needs no allocation and no destructor, so the allocator may read it.
    static COUNTING_THIS_THREAD: Cell<bool> = const { Cell::new(false) };
}

fn note_allocation() {
    if COUNTING.load(Ordering::Relaxed) || COUNTING_THIS_THREAD.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Heap allocations made on any thread while `work` runs. The tests of this binary take
/// [`ONE_TEST_AT_A_TIME`] first, so under `cargo test` (tests on threads of one process) one
/// test's allocations never land in another's count.
fn allocations_of<T>(work: impl FnOnce() -> T) -> (T, u64) {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let result = work();
    COUNTING.store(false, Ordering::SeqCst);
    (result, ALLOCATIONS.load(Ordering::SeqCst))
}

/// Heap allocations made on the calling thread while `work` runs, for work that never leaves it
/// (`decide`). Counting every thread there would add whatever another thread happens to allocate
/// meanwhile (libtest's note that a test has run over 60 s is a `String` made on the harness's
/// thread) to `decide`'s count, and so take it off the layer's own.
fn allocations_on_this_thread_of<T>(work: impl FnOnce() -> T) -> (T, u64) {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING_THIS_THREAD.with(|counting| counting.set(true));
    let result = work();
    COUNTING_THIS_THREAD.with(|counting| counting.set(false));
    (result, ALLOCATIONS.load(Ordering::SeqCst))
}

static ONE_TEST_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const LAYERS: usize = 100;
/// At most one allocation per this many layers may come from timing (see the top of this file).
const TIMING_SLACK_LAYERS: usize = 10;
/// Jobs one block of rayon's shared queue holds (crossbeam-deque's `BLOCK_CAP`).
const RAYON_QUEUE_BLOCK_SLOTS: usize = 63;

/// The sample build's frames, decoded once (decoding a PNG is the camera's job, not the layer's).
fn sample_frames() -> Vec<DynamicImage> {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/sample-build");
    let mut paths: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    paths.sort();
    assert_eq!(paths.len(), 12, "the sample build has 12 layers");
    paths.iter().map(|p| image::open(p).unwrap()).collect()
}

/// Runs 100 layers after a warm-up on `choice` and checks that they allocate what the backend
/// and `decide` allocate, nothing more. Returns (backend's allocations per run, layer's
/// allocations outside the backend and `decide`) for the message.
fn check_backend(choice: BackendChoice) {
    let _alone = ONE_TEST_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let frames = sample_frames();
    let model = LoadedModel::load(None, choice, Precision::Auto, None).unwrap();
    let mut pipeline = Pipeline::new(Config::embedded(), model, "embedded").unwrap();
    // Warm-up: every frame once, so every buffer has met the largest layer.
    let mut verdicts = Vec::new();
    for frame in &frames {
        verdicts.push(pipeline.run_layer(frame).verdict);
    }

    // The backend alone, on the same input size, the same number of runs.
    let input = vec![0.5f32; pipeline.model.spec.input.len()];
    pipeline.model.backend.infer(&input).unwrap();
    let (_, backend_allocations) = allocations_of(|| {
        for _ in 0..LAYERS {
            pipeline.model.backend.infer(&input).unwrap();
        }
    });
    let timing_slack = (LAYERS / TIMING_SLACK_LAYERS) as u64;
    assert!(
        backend_allocations % LAYERS as u64 <= timing_slack,
        "{choice:?}: the backend allocates a varying amount per run ({backend_allocations} in {LAYERS} runs)"
    );
    let backend_allocations = backend_allocations - backend_allocations % LAYERS as u64;

    let mut layer_allocations = 0;
    let mut decide_allocations = 0;
    for layer in 0..LAYERS {
        let frame = &frames[layer % frames.len()];
        let (outcome, allocations) = allocations_of(|| pipeline.run_layer(frame));
        layer_allocations += allocations;
        assert_eq!(
            outcome.verdict,
            verdicts[layer % frames.len()],
            "{choice:?}: layer {layer} changed verdict after warm-up"
        );
        assert!(outcome.unjudged.is_none(), "{:?}", outcome.unjudged);
        // What `decide` allocates on this layer (its reasons), on the defects the layer measured
        // (the sample build has fewer than the listed maximum, so `defects` holds them all).
        assert_eq!(outcome.defects_dropped, 0);
        let config = &pipeline.config;
        let (decision, allocations) = allocations_on_this_thread_of(|| {
            decide(
                config,
                &pipeline.model.class_names,
                &pipeline.model.defect_classes,
                &outcome.defects,
                &pipeline.fused,
            )
        });
        assert_eq!(Some(&decision), outcome.decision.as_ref());
        decide_allocations += allocations;
    }
    let own_allocations = layer_allocations as i64 - backend_allocations as i64 - decide_allocations as i64;
    eprintln!(
        "{choice:?}: {LAYERS} layers made {layer_allocations} allocations: backend {backend_allocations} ({} per run), \
         decide {decide_allocations}, the rest of the layer {own_allocations}",
        backend_allocations / LAYERS as u64
    );
    // One block of rayon's shared queue per 63 jobs handed in, and the dependencies' timing
    // (see the top of this file).
    let rayon_queue_blocks = LAYERS.div_ceil(RAYON_QUEUE_BLOCK_SLOTS) as i64;
    let allowed = rayon_queue_blocks + 2 * timing_slack as i64;
    assert!(
        (0..=allowed).contains(&own_allocations),
        "{choice:?}: the layer path allocates {own_allocations} times outside the backend and decide \
         (at most {rayon_queue_blocks} blocks of rayon's queue and {} from timing are allowed)",
        2 * timing_slack
    );
    assert!(
        verdicts.iter().any(|v| *v != hal::Verdict::Pass),
        "the sample build has defect layers, so measure and decide had work"
    );
}

#[test]
fn a_layer_allocates_nothing_but_what_tract_allocates() {
    check_backend(BackendChoice::Tract);
}

#[test]
fn a_layer_allocates_nothing_but_what_onnx_runtime_allocates() {
    check_backend(BackendChoice::Ort);
}
