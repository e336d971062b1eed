//! Pre-initialization: a component that exports `init: func()` is instantiated once at deploy,
//! its `init` runs, and the resulting state is snapshotted into a new component with
//! `wasmtime-wizer`. Every request then starts from the initialized state, so expensive setup
//! (parsing, building tables, importing Python modules) is paid once, not per request.
//!
//! Invariants: `init` runs under the same sandbox as a request (WASI and wasi:http linked,
//! outbound HTTP denied, memory capped, time bounded); a failing `init` refuses the deploy;
//! a component without `init` is deployed as it is.

use std::time::Duration;

use wasmtime::Store;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Instance, Lift, WasmList};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

use crate::access::policy::Policy;
use crate::guest_kv::KvAccess;
use crate::runtime::{Runtime, ValidateError};
use crate::telemetry::TraceCx;

/// The export a component names to ask for pre-initialization.
pub const INIT_EXPORT: &str = "init";

/// How long `init` may run at deploy.
const INIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `component` exports `init: func()`.
pub fn wants_preinit(component: &Component) -> Result<bool, ValidateError> {
    match component.get_export(None, INIT_EXPORT) {
        None => Ok(false),
        Some((ComponentItem::ComponentFunc(func), _)) if func.params().len() == 0 && func.results().len() == 0 => {
            Ok(true)
        }
        Some(_) => Err(ValidateError::BadInit("the component's `init` export must be `init: func()`".into())),
    }
}

/// Runs `init` on a fresh instance of `wasm` and returns the snapshotted component.
pub async fn snapshot(runtime: &Runtime, wasm: &[u8]) -> Result<Vec<u8>, ValidateError> {
    let mut wizer = Wizer::new();
    // Keep `init` exported: removing it breaks Rust components (wasmtime #13168).
    wizer.init_func(INIT_EXPORT).keep_init_func(true);
    let (context, instrumented) = wizer
        .instrument_component(wasm)
        .map_err(|e| ValidateError::BadInit(format!("cannot instrument the component: {e:#}")))?;
    let component =
        Component::new(runtime.engine(), &instrumented).map_err(|e| ValidateError::Invalid(format!("{e:#}")))?;
    let mut store = runtime.guest_store(
        "(init at deploy)",
        &Policy { timeout: INIT_TIMEOUT, ..Policy::default() },
        KvAccess::none(),
        Default::default(),
        None,
        TraceCx::default(),
    );
    let run = async {
        let instance = runtime
            .linker()
            .instantiate_async(&mut store, &component)
            .await
            .map_err(|e| format!("instantiating for init: {e:#}"))?;
        let init = instance.get_typed_func::<(), ()>(&mut store, INIT_EXPORT).map_err(|e| format!("{e:#}"))?;
        init.call_async(&mut store, ()).await.map_err(|e| super::invoke::describe_failure(&e))?;
        Ok::<_, String>(instance)
    };
    let instance = match tokio::time::timeout(INIT_TIMEOUT, run).await {
        Err(_) => return Err(ValidateError::BadInit(format!("`init` did not finish within {INIT_TIMEOUT:?}"))),
        Ok(Err(reason)) => return Err(ValidateError::BadInit(format!("`init` failed: {reason}"))),
        Ok(Ok(instance)) => instance,
    };
    wizer
        .snapshot_component(&context, &mut SnapshotSource { store: &mut store, instance })
        .await
        .map_err(|e| ValidateError::BadInit(format!("cannot snapshot the initialized state: {e:#}")))
}

/// Lets wizer read the initialized instance's memories and globals through the accessor
/// functions its instrumentation exported.
struct SnapshotSource<'a, T: 'static> {
    store: &'a mut Store<T>,
    instance: Instance,
}

impl<T: Send> SnapshotSource<'_, T> {
    async fn call<R: Lift + Send + Sync + 'static, Out>(
        &mut self,
        interface: &str,
        func: &str,
        read: impl FnOnce(&Store<T>, R) -> Out,
    ) -> Out {
        // Wizer's instrumentation guarantees these exports; a miss is a wizer bug.
        let outer = self.instance.get_export_index(&mut *self.store, None, interface).expect("wizer accessor instance");
        let inner = self.instance.get_export_index(&mut *self.store, Some(&outer), func).expect("wizer accessor");
        let typed = self.instance.get_typed_func::<(), (R,)>(&mut *self.store, inner).expect("wizer accessor type");
        let (value,) = typed.call_async(&mut *self.store, ()).await.expect("wizer accessor call");
        read(self.store, value)
    }
}

impl<T: Send> ComponentInstanceState for SnapshotSource<'_, T> {
    async fn call_func_ret_list_u8(&mut self, instance: &str, func: &str, contents: impl FnOnce(&[u8]) + Send) {
        self.call(instance, func, |store, list: WasmList<u8>| contents(list.as_le_slice(store))).await
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func, |_, value| value).await
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func, |_, value| value).await
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call(instance, func, |_, value: f32| value.to_bits()).await
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call(instance, func, |_, value: f64| value.to_bits()).await
    }
}
