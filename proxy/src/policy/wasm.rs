//! Wasm packs: core modules with the FleetForge ABI, run by wasmtime.
//!
//! One process-wide engine (pooling allocator, fuel metering, epoch interruption) with one thread
//! that advances the epoch every [`TICK`]. Each module is compiled and linked once
//! ([`InstancePre`]); every call gets a fresh store ([`CallStore`], shared by the Wasm packs that
//! decide that call) and each pack a fresh instance in it, so nothing a pack does survives the
//! call and no pack sees another's memory (packs import nothing). Fuel, the epoch deadline and the
//! memory limit bound each pack's evaluation separately; a trap, an out-of-bounds result or a
//! verdict that does not parse is an error, which the caller turns into a deny.

use std::sync::OnceLock;
use std::time::Duration;

use wasmtime::{
    Config, Enabled, Engine, ExternType, InstanceAllocationStrategy, InstancePre, Linker, Module, ModuleExport,
    PoolingAllocationConfig, Store, StoreLimits, StoreLimitsBuilder, ValType,
};

use super::Limits;
use super::input::{Document, Verdict};

/// How often the epoch advances; timeouts are rounded up to it.
const TICK: Duration = Duration::from_millis(5);
/// The most linear memory any pack may be given (the pool reserves slots of this size).
pub const MAX_MEMORY: u64 = 256 << 20;
/// How much of a used memory slot is kept resident (and zeroed with memset) for the next call.
const KEEP_RESIDENT: usize = 256 << 10;
/// The largest verdict read back from a module.
const MAX_VERDICT: usize = 1 << 20;
/// How many pack instances may be alive at once, process-wide. Calls evaluate synchronously and a
/// call holds at most [`PACKS_PER_STORE`] instances, so this bounds threads evaluating at the same
/// time (128), not calls in flight. Only address space is reserved up front.
const POOL_INSTANCES: u32 = 1024;
/// How many pack instances one store holds; a call with more Wasm packs starts another store.
const PACKS_PER_STORE: usize = 8;

fn engine() -> Result<&'static Engine, String> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut pool = PoolingAllocationConfig::default();
            pool.total_core_instances(POOL_INSTANCES)
                .total_memories(POOL_INSTANCES)
                .total_tables(POOL_INSTANCES)
                .max_memory_size(usize::try_from(MAX_MEMORY).unwrap_or(usize::MAX))
                // Reset reused slots with memset and keep their pages resident: decommitting
                // them (madvise) and faulting them back in cost more than the evaluation.
                .linear_memory_keep_resident(KEEP_RESIDENT)
                .table_keep_resident(KEEP_RESIDENT)
                // Linux 6.7+: reset only the pages a call wrote (found with the PAGEMAP_SCAN
                // ioctl) instead of memsetting the whole resident prefix; elsewhere, memset.
                .pagemap_scan(Enabled::Auto);
            let mut config = Config::new();
            config
                // Map the data segments (about 35 KB in the example packs) copy-on-write from an
                // image: a slot that last held the same module (the pool prefers those) keeps
                // the mapping, so instantiating copies nothing and the reset restores only the
                // pages a call wrote. Measured against copying the segments in: one verdict
                // 7.6 vs 9.3 us, the four example packs 31.3 vs 45.9 us (bench/README.md).
                .memory_init_cow(true)
                // Explicit bounds checks, no guard regions: a reused slot then keeps its pages
                // read/write, where trapping through virtual memory costs mprotect calls on
                // every instantiation and growth (measured: a third of a verdict's time).
                .signals_based_traps(false)
                .memory_reservation(MAX_MEMORY)
                .memory_guard_size(0)
                .consume_fuel(true)
                .epoch_interruption(true)
                .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
            let engine = Engine::new(&config).map_err(|e| format!("cannot start the Wasm engine: {e:#}"))?;
            let ticker = engine.clone();
            std::thread::Builder::new()
                .name("fleetforge-wasm-epoch".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(TICK);
                        ticker.increment_epoch();
                    }
                })
                .map_err(|e| format!("cannot start the Wasm epoch thread: {e}"))?;
            Ok(engine)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The Wasm store of one call, made on first use and dropped with the call: the Wasm packs that
/// decide a call are instantiated side by side in it, so a call pays for one store, not one per
/// pack.
#[derive(Default)]
pub struct CallStore {
    store: Option<Store<StoreLimits>>,
    /// Instances made in `store`.
    instances: usize,
}

impl std::fmt::Debug for CallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallStore").field("used", &self.store.is_some()).finish()
    }
}

impl CallStore {
    /// A store with room for one more instance, made on first use with a memory cap of
    /// `limits.memory` per pack.
    fn get(&mut self, engine: &Engine, limits: &Limits) -> &mut Store<StoreLimits> {
        if self.instances == PACKS_PER_STORE {
            // Full: free its instances' slots before taking more.
            self.store = None;
            self.instances = 0;
        }
        self.instances += 1;
        self.store.get_or_insert_with(|| {
            let memory_cap = usize::try_from(limits.memory.min(MAX_MEMORY)).unwrap_or(usize::MAX);
            let store_limits = StoreLimitsBuilder::new()
                .memory_size(memory_cap)
                .instances(PACKS_PER_STORE)
                .trap_on_grow_failure(true)
                .build();
            let mut store = Store::new(engine, store_limits);
            store.limiter(|l| l);
            store
        })
    }
}

/// A compiled Wasm pack.
pub struct WasmPack {
    pre: InstancePre<StoreLimits>,
    /// The ABI's exports, resolved once (looked up by index per call, not by name): `memory`,
    /// `alloc`, and `evaluate_binary` when the module has it, else `evaluate`.
    exports: [ModuleExport; 3],
    /// Whether the module takes the binary call document (`evaluate_binary`).
    binary: bool,
    /// Written before the input document: `{"config":<config>,"input":` for `evaluate`, the
    /// config's length (`u32`, little-endian) and JSON for `evaluate_binary`.
    prefix: Vec<u8>,
}

impl std::fmt::Debug for WasmPack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPack").finish_non_exhaustive()
    }
}

impl WasmPack {
    /// Compiles `module` and checks it has the ABI: no imports; exports `memory`,
    /// `alloc(i32) -> i32` and `evaluate(i32, i32) -> i64`, and optionally
    /// `evaluate_binary(i32, i32) -> i64`, which is then used: it reads the input in the binary
    /// layout, which a pack decodes several times faster than it parses the JSON.
    pub fn load(module: &[u8], config: Option<&serde_json::Value>) -> Result<Self, String> {
        let engine = engine()?;
        let module = Module::from_binary(engine, module).map_err(|e| format!("not a valid Wasm module: {e:#}"))?;
        if let Some(import) = module.imports().next() {
            return Err(format!(
                "the module imports {}::{}; FleetForge Wasm packs must have no imports",
                import.module(),
                import.name()
            ));
        }
        let binary = check_exports(&module)?;
        let export =
            |name: &str| module.get_export_index(name).ok_or_else(|| format!("the module does not export {name}"));
        let entry = if binary { "evaluate_binary" } else { "evaluate" };
        let exports = [export("memory")?, export("alloc")?, export(entry)?];
        let pre = Linker::new(engine).instantiate_pre(&module).map_err(|e| format!("cannot link the module: {e:#}"))?;
        let config = config.map_or_else(|| "null".to_owned(), serde_json::Value::to_string);
        let prefix = if binary {
            let len = u32::try_from(config.len()).map_err(|_| format!("the config is {} bytes", config.len()))?;
            [&len.to_le_bytes()[..], config.as_bytes()].concat()
        } else {
            format!("{{\"config\":{config},\"input\":").into_bytes()
        };
        Ok(Self { pre, exports, binary, prefix })
    }

    /// The module's ABI entry points, for inspection.
    pub fn describe(&self) -> Vec<String> {
        let mut entries = vec!["alloc(i32) -> i32".to_owned(), "evaluate(i32, i32) -> i64".to_owned()];
        if self.binary {
            entries.push("evaluate_binary(i32, i32) -> i64 (used: binary input)".into());
        }
        entries
    }

    /// Evaluates one call in a fresh instance in the call's `store`, within `limits` (fuel and
    /// deadline are this pack's alone: both are reset before it runs).
    pub fn evaluate(&self, store: &mut CallStore, doc: &Document, limits: &Limits) -> Result<Verdict, String> {
        let store = store.get(self.pre.module().engine(), limits);
        store.set_fuel(limits.fuel).map_err(|e| e.to_string())?;
        let ticks = limits.timeout.as_nanos().div_ceil(TICK.as_nanos()).max(1) + 1;
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        let trap = |what: &str, e: wasmtime::Error| explain(what, &e, limits);

        let instance = self.pre.instantiate(&mut *store).map_err(|e| trap("instantiating the module", e))?;
        let [memory, alloc, evaluate] = &self.exports;
        let memory = instance
            .get_module_export(&mut *store, memory)
            .and_then(wasmtime::Extern::into_memory)
            .ok_or("the module exports no memory")?;
        let func = |store: &mut Store<StoreLimits>, export: &ModuleExport, name: &str| {
            instance
                .get_module_export(&mut *store, export)
                .and_then(wasmtime::Extern::into_func)
                .ok_or_else(|| format!("the module exports no function {name}"))
        };
        let alloc = func(&mut *store, alloc, "alloc")?.typed::<i32, i32>(&*store).map_err(|e| trap("alloc", e))?;
        let evaluate = func(&mut *store, evaluate, if self.binary { "evaluate_binary" } else { "evaluate" })?
            .typed::<(i32, i32), i64>(&*store)
            .map_err(|e| trap("evaluate", e))?;

        // JSON: prefix, input, closing brace. Binary: prefix (config), input.
        let (input, suffix): (&[u8], &[u8]) =
            if self.binary { (doc.binary(), b"") } else { (doc.json().as_bytes(), b"}") };
        let len = self.prefix.len() + input.len() + suffix.len();
        let len32 = i32::try_from(len).map_err(|_| format!("the call document is too large ({len} bytes)"))?;
        let ptr = alloc.call(&mut *store, len32).map_err(|e| trap("alloc", e))?;
        let start = usize::try_from(ptr).map_err(|_| format!("alloc returned a negative pointer {ptr}"))?;
        if start == 0 {
            return Err(format!("alloc({len}) returned 0"));
        }
        let write = |store: &mut Store<StoreLimits>, at: usize, bytes: &[u8]| {
            memory
                .write(store, at, bytes)
                .map_err(|_| format!("alloc returned {start}, which has no room for {len} bytes"))
        };
        write(&mut *store, start, &self.prefix)?;
        write(&mut *store, start + self.prefix.len(), input)?;
        write(&mut *store, start + self.prefix.len() + input.len(), suffix)?;

        let packed = evaluate.call(&mut *store, (ptr, len32)).map_err(|e| trap("evaluate", e))?;
        // The ABI packs an unsigned pointer and length into the i64's bits.
        let packed = u64::from_ne_bytes(packed.to_ne_bytes());
        let (out, out_len) = (usize::try_from(packed >> 32), usize::try_from(packed & 0xffff_ffff));
        let (Ok(out), Ok(out_len)) = (out, out_len) else { return Err("evaluate returned an unusable result".into()) };
        if out_len > MAX_VERDICT {
            return Err(format!("the verdict is {out_len} bytes; the limit is {MAX_VERDICT}"));
        }
        let bytes = memory
            .data(&*store)
            .get(out..out.saturating_add(out_len))
            .ok_or_else(|| format!("evaluate returned bytes {out}..{} outside the module's memory", out + out_len))?;
        Verdict::parse(bytes).map_err(|e| format!("the verdict is not valid JSON of the verdict shape: {e}"))
    }
}

/// Names a trap in words an operator can act on.
fn explain(what: &str, e: &wasmtime::Error, limits: &Limits) -> String {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => {
            format!("{what} ran out of fuel ({} units; proxy.policy.fuel)", limits.fuel)
        }
        Some(wasmtime::Trap::Interrupt) => {
            format!("{what} ran past its deadline ({:?}; proxy.policy.timeout)", limits.timeout)
        }
        Some(trap) => format!("{what} trapped: {trap}"),
        None if format!("{e:#}").contains("growing memory") => {
            format!("{what} tried to grow its memory past {} bytes (proxy.policy.memory)", limits.memory)
        }
        None => format!("{what} failed: {e:#}"),
    }
}

/// Checks the ABI's exports; `Ok(true)` when the module also has a well-typed `evaluate_binary`.
fn check_exports(module: &Module) -> Result<bool, String> {
    let func = |name: &str, params: &[ValType], results: &[ValType]| -> Result<(), String> {
        let want = || format!("{name}({params:?}) -> {results:?}");
        match module.get_export(name) {
            Some(ExternType::Func(f)) => {
                let same = |a: &mut dyn ExactSizeIterator<Item = ValType>, b: &[ValType]| {
                    a.len() == b.len() && a.zip(b).all(|(x, y)| ValType::eq(&x, y))
                };
                if same(&mut f.params(), params) && same(&mut f.results(), results) {
                    Ok(())
                } else {
                    Err(format!("export {name} has the wrong signature; the ABI needs {}", want()))
                }
            }
            _ => Err(format!("the module does not export the function {}", want())),
        }
    };
    if !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
        return Err("the module does not export its memory as \"memory\"".into());
    }
    func("alloc", &[ValType::I32], &[ValType::I32])?;
    func("evaluate", &[ValType::I32, ValType::I32], &[ValType::I64])?;
    match module.get_export("evaluate_binary") {
        None => Ok(false),
        Some(_) => func("evaluate_binary", &[ValType::I32, ValType::I32], &[ValType::I64]).map(|()| true),
    }
}
