//! `kimberlite._native`: the Python bindings of `kimberlite-client`, the same client core and
//! session as the Rust API (automatic batching of appends from Python threads included). The
//! GIL is released while a call waits for the cluster. `python/kimberlite/__init__.py` is the
//! public module; `_native.pyi` holds the type hints.

use std::net::SocketAddr;
use std::time::Duration;

use kimberlite_client as client;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

pyo3::create_exception!(_native, KimberliteError, PyException, "Any error of the client.");
pyo3::create_exception!(
    _native,
    TimeoutError,
    KimberliteError,
    "No replica answered in time; a write's outcome is unknown (read to find out)."
);
pyo3::create_exception!(
    _native,
    WrongClusterError,
    KimberliteError,
    "The replicas close the connection unanswered: wrong cluster id, or all client slots taken."
);
pyo3::create_exception!(
    _native,
    EvictedError,
    KimberliteError,
    "The cluster ended the session; the next call opens a new one."
);
pyo3::create_exception!(
    _native,
    TooLargeError,
    KimberliteError,
    "The request is larger than a message: append fewer or smaller events."
);
pyo3::create_exception!(
    _native,
    RefusedError,
    KimberliteError,
    "The cluster refused the operation: args are (code name, stream's next offset)."
);

fn error_to_python(error: client::Error) -> PyErr {
    let text = error.to_string();
    match error {
        client::Error::Timeout => TimeoutError::new_err(text),
        client::Error::WrongClusterOrFull { .. } => WrongClusterError::new_err(text),
        client::Error::Evicted(_) => EvictedError::new_err(text),
        client::Error::TooLarge { .. } => TooLargeError::new_err(text),
        client::Error::Refused { code, offset } => RefusedError::new_err((code.name(), offset)),
        client::Error::InvalidArgument(_) => PyValueError::new_err(text),
        client::Error::InvalidReply(_) | client::Error::Closed => KimberliteError::new_err(text),
    }
}

/// A duration in seconds from Python: finite and not negative, or `ValueError`.
fn seconds(value: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!("{what} must be a finite number of seconds >= 0"))
    })
}

/// `str` (as UTF-8) or `bytes`.
fn bytes_of(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u8>> {
    if let Ok(bytes) = value.cast::<PyBytes>() {
        return Ok(bytes.as_bytes().to_vec());
    }
    if let Ok(text) = value.cast::<PyString>() {
        return Ok(text.to_str()?.as_bytes().to_vec());
    }
    Err(PyTypeError::new_err(format!("{what} must be str or bytes")))
}

/// An event as the cluster holds it.
#[pyclass(frozen, module = "kimberlite")]
struct RecordedEvent {
    #[pyo3(get)]
    stream: u64,
    #[pyo3(get)]
    offset: u64,
    #[pyo3(get)]
    position: u64,
    #[pyo3(get)]
    timestamp: u64,
    #[pyo3(get)]
    chain: u128,
    event: client::RecordedEvent,
}

#[pymethods]
impl RecordedEvent {
    #[getter(r#type)]
    fn event_type<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.event.event_type)
    }

    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.event.metadata)
    }

    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.event.data)
    }

    fn __repr__(&self) -> String {
        format!(
            "RecordedEvent(stream={}, offset={}, position={}, type={:?}, {} bytes)",
            self.stream,
            self.offset,
            self.position,
            String::from_utf8_lossy(&self.event.event_type),
            self.event.data.len()
        )
    }
}

/// An iterator's next item, for Python: an event, the end (None), or the error raised.
fn next_to_python(
    next: Option<Result<client::RecordedEvent, client::Error>>,
) -> PyResult<Option<RecordedEvent>> {
    next.map(|event| event.map(recorded).map_err(error_to_python)).transpose()
}

fn recorded(event: client::RecordedEvent) -> RecordedEvent {
    RecordedEvent {
        stream: event.stream,
        offset: event.offset,
        position: event.position,
        timestamp: event.timestamp,
        chain: event.chain,
        event,
    }
}

/// A stream's state.
#[pyclass(frozen, get_all, module = "kimberlite")]
struct StreamInfo {
    stream: u64,
    tenant: u64,
    offset_next: u64,
    chain: u128,
    grid_used_bytes: u64,
    grid_room_bytes: u64,
}

/// A session with a cluster (see `kimberlite.Client`).
#[pyclass(frozen, module = "kimberlite")]
struct Client {
    inner: client::Client,
}

/// The events an append takes: each a `(type, data)` or `(type, data, metadata)` tuple.
fn events_of(events: &Bound<'_, PyAny>) -> PyResult<Vec<client::EventData>> {
    let mut out = Vec::new();
    for item in events.try_iter()? {
        let item = item?;
        let tuple = item
            .cast::<PyTuple>()
            .map_err(|_| PyTypeError::new_err("each event is a (type, data[, metadata]) tuple"))?;
        let (event_type, data) =
            (bytes_of(&tuple.get_item(0)?, "type")?, bytes_of(&tuple.get_item(1)?, "data")?);
        let metadata = match tuple.len() {
            2 => Vec::new(),
            3 => bytes_of(&tuple.get_item(2)?, "metadata")?,
            _ => {
                return Err(PyTypeError::new_err("each event is a (type, data[, metadata]) tuple"));
            }
        };
        out.push(client::EventData::new(event_type, data).with_metadata(metadata));
    }
    if out.is_empty() {
        return Err(PyValueError::new_err("append takes at least one event"));
    }
    Ok(out)
}

/// `"any"`, `"no_stream"`, or an offset.
fn expected_of(expected: &Bound<'_, PyAny>) -> PyResult<client::Expected> {
    if let Ok(offset) = expected.extract::<u64>() {
        return Ok(client::Expected::Offset(offset));
    }
    match expected.extract::<String>()?.as_str() {
        "any" => Ok(client::Expected::Any),
        "no_stream" => Ok(client::Expected::NoStream),
        other => Err(PyValueError::new_err(format!(
            "expected is an offset, \"any\" or \"no_stream\", not {other:?}"
        ))),
    }
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (cluster, addresses, request_timeout = 30.0, subscription_wait = 1.0))]
    fn new(
        cluster: u64,
        addresses: Vec<String>,
        request_timeout: f64,
        subscription_wait: f64,
    ) -> PyResult<Client> {
        let addresses = addresses
            .iter()
            .map(|address| {
                address.parse::<SocketAddr>().map_err(|_| {
                    PyValueError::new_err(format!("{address:?} is not an address (HOST:PORT)"))
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let mut options = client::Options::new(cluster, addresses);
        options.request_deadline = seconds(request_timeout, "request_timeout")?;
        options.subscription_wait = seconds(subscription_wait, "subscription_wait")?;
        let inner = client::Client::connect(options).map_err(error_to_python)?;
        Ok(Client { inner })
    }

    #[pyo3(signature = (stream, tenant = 0))]
    fn create_stream(&self, py: Python<'_>, stream: u64, tenant: u64) -> PyResult<()> {
        py.detach(|| self.inner.create_stream(stream, tenant)).map_err(error_to_python)
    }

    #[pyo3(signature = (stream, events, expected = None))]
    fn append(
        &self,
        py: Python<'_>,
        stream: u64,
        events: &Bound<'_, PyAny>,
        expected: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let events = events_of(events)?;
        let expected = expected.map_or(Ok(client::Expected::Any), expected_of)?;
        py.detach(|| self.inner.append(stream, expected, &events)).map_err(error_to_python)
    }

    fn stream_info(&self, py: Python<'_>, stream: u64) -> PyResult<StreamInfo> {
        let info = py.detach(|| self.inner.stream_info(stream)).map_err(error_to_python)?;
        Ok(StreamInfo {
            stream: info.stream,
            tenant: info.tenant,
            offset_next: info.offset_next,
            chain: info.chain,
            grid_used_bytes: info.grid_used_bytes,
            grid_room_bytes: info.grid_room_bytes,
        })
    }

    #[pyo3(signature = (stream, offset = 0))]
    fn read_stream(&self, stream: u64, offset: u64) -> Events {
        Events { inner: std::sync::Mutex::new(self.inner.read_stream(stream, offset)) }
    }

    #[pyo3(signature = (position = 0))]
    fn read_log(&self, position: u64) -> Events {
        Events { inner: std::sync::Mutex::new(self.inner.read_log(position)) }
    }

    #[pyo3(signature = (stream = None, offset = 0, position = 0))]
    fn subscribe(&self, stream: Option<u64>, offset: u64, position: u64) -> Subscription {
        let start = match stream {
            Some(stream) => client::Start::Stream { stream, offset },
            None => client::Start::Log { position },
        };
        Subscription { inner: std::sync::Mutex::new(self.inner.subscribe(start)) }
    }

    /// (requests, appends): append requests sent, and the appends they carried.
    fn batching(&self) -> (u64, u64) {
        let batching = self.inner.batching();
        (batching.requests, batching.appends)
    }
}

/// The events of a read: an iterator that reads more as it goes.
#[pyclass(module = "kimberlite")]
struct Events {
    inner: std::sync::Mutex<client::Events>,
}

#[pymethods]
impl Events {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<RecordedEvent>> {
        let next = py.detach(|| self.inner.lock().unwrap_or_else(|e| e.into_inner()).next());
        next_to_python(next)
    }
}

/// Events as they commit: `next` blocks until one comes (Ctrl-C interrupts it).
#[pyclass(module = "kimberlite")]
struct Subscription {
    inner: std::sync::Mutex<client::Subscription>,
}

#[pymethods]
impl Subscription {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<RecordedEvent> {
        loop {
            let next = self.next_timeout(py, 1.0)?;
            if let Some(event) = next {
                return Ok(event);
            }
            py.check_signals()?;
        }
    }

    /// The next event, or None if none came within about `timeout` seconds.
    fn next_timeout(&self, py: Python<'_>, timeout: f64) -> PyResult<Option<RecordedEvent>> {
        let timeout = seconds(timeout, "timeout")?;
        let next = py
            .detach(|| self.inner.lock().unwrap_or_else(|e| e.into_inner()).next_timeout(timeout));
        next_to_python(next)
    }

    /// Where the subscription continues: the next offset of its stream, or position of the log.
    #[getter]
    fn position(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).position()
    }
}

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    module.add_class::<Client>()?;
    module.add_class::<RecordedEvent>()?;
    module.add_class::<StreamInfo>()?;
    module.add_class::<Events>()?;
    module.add_class::<Subscription>()?;
    module.add("KimberliteError", py.get_type::<KimberliteError>())?;
    module.add("TimeoutError", py.get_type::<TimeoutError>())?;
    module.add("WrongClusterError", py.get_type::<WrongClusterError>())?;
    module.add("EvictedError", py.get_type::<EvictedError>())?;
    module.add("TooLargeError", py.get_type::<TooLargeError>())?;
    module.add("RefusedError", py.get_type::<RefusedError>())?;
    Ok(())
}
