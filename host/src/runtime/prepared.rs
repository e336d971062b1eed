//! A function's build with its imports resolved ([`FunctionPre`]): what each run of it
//! instantiates, and which handlers it exports: `wasi:http/incoming-handler`, the
//! `ledge:platform/websocket-handler` functions, or both (spec "WebSockets": a component serves
//! WebSockets with or without an HTTP handler).
//!
//! Invariant: a build exports at least one of them (checked at deploy by [`FunctionPre::new`]);
//! a request to a build without an HTTP handler is refused before any instance starts, as an
//! upgrade to one without the WebSocket handlers is.

use wasmtime::component::InstancePre;
use wasmtime_wasi_http::p2::bindings::ProxyIndices;

use super::{GuestState, ValidateError};
use crate::guest_kv::bindings::exports::ledge::platform::websocket_handler::GuestIndices;

/// A build ready to instantiate, and where its handlers are.
#[derive(Clone)]
pub struct FunctionPre {
    pre: InstancePre<GuestState>,
    http: Option<ProxyIndices>,
    websocket: Option<GuestIndices>,
}

impl FunctionPre {
    /// `pre`, if it exports an HTTP handler, the WebSocket handlers, or both. An HTTP handler
    /// export that does not match the interface is refused, never taken as none.
    pub fn new(pre: InstancePre<GuestState>) -> Result<FunctionPre, ValidateError> {
        let websocket = GuestIndices::new(&pre).ok();
        let component = pre.component();
        let exports_http = component
            .component_type()
            .exports(component.engine())
            .any(|(name, _)| name.starts_with("wasi:http/incoming-handler@"));
        let http = match ProxyIndices::new(&pre) {
            Ok(http) => Some(http),
            Err(error) if exports_http => {
                let detail = format!("its `wasi:http/incoming-handler` export does not match the interface: {error:#}");
                return Err(ValidateError::Invalid(detail));
            }
            Err(error) if websocket.is_none() => return Err(ValidateError::NoHandler(format!("{error:#}"))),
            Err(_) => None,
        };
        Ok(FunctionPre { pre, http, websocket })
    }

    pub fn instance_pre(&self) -> &InstancePre<GuestState> {
        &self.pre
    }

    /// Where the HTTP handler is, if the build exports one.
    pub fn http_handler(&self) -> Option<&ProxyIndices> {
        self.http.as_ref()
    }

    /// Where the WebSocket handlers are, if the build exports them.
    pub fn websocket_handler(&self) -> Option<&GuestIndices> {
        self.websocket.as_ref()
    }
}
