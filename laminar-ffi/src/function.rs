//! User-defined scalar functions written in C (or any language with a C ABI: the Go package
//! registers its functions through these). The engine calls the function from its own threads, a
//! batch of rows at a time, with the arguments as one Arrow struct array; the result comes back
//! as an Arrow array and is checked (length, type, validity) before the engine uses it.

use std::ffi::{c_char, c_int, c_void};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StructArray, make_array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use laminar_core::{Error, Result};

use crate::config::laminar_config;
use crate::db::laminar_db;
use crate::error::{guard, handle, handle_mut, laminar_error, laminar_status};
use crate::subscription::laminar_free_cb;

/// How a function's result depends on its arguments (the planner may fold calls of an
/// immutable function over constants once).
///
/// Since: 0.1.0
#[allow(non_camel_case_types)]
pub type laminar_volatility = i32;

/// The same arguments always give the same result.
pub const LAMINAR_VOLATILITY_IMMUTABLE: laminar_volatility = 0;
/// The same arguments give the same result within one statement.
pub const LAMINAR_VOLATILITY_STABLE: laminar_volatility = 1;
/// The result may differ from call to call (a random number, a lookup that changes).
pub const LAMINAR_VOLATILITY_VOLATILE: laminar_volatility = 2;

/// Computes a scalar function over one batch of rows.
///
/// - `args`, `args_schema`: the arguments, as a struct array (one child per argument, in order,
///   of the declared types) of `args->length` rows, with its schema. Handed over: the callback
///   may move them (copy the struct and set `release = NULL`) or leave them, in which case
///   LaminarDB releases them after the callback returns.
/// - `out`, `out_schema`: caller-allocated, released on entry; on success the callback moves its
///   result into them: an array of `args->length` rows of the declared return type, and its
///   schema. LaminarDB owns and releases them afterwards (also on failure, when they were set).
/// - `error`, `error_size`: on failure, the callback may write a NUL-terminated message of at
///   most `error_size` bytes (1024) into `error`; it becomes the stream's error text.
///
/// Returns 0 on success, anything else on failure: the ad-hoc statement or the stream that called
/// the function fails with `LAMINAR_INVALID_DATA` and "function '<name>' failed: <message>"
/// (other streams and the database go on). A result of the wrong length or type, or an array
/// that is not valid Arrow, fails it the same way.
///
/// It runs on threads owned by LaminarDB (or the thread of an ad-hoc query), possibly on several
/// at once, and must return normally (no `longjmp`, no C++ exception).
///
/// Since: 0.1.0
#[allow(non_camel_case_types)]
pub type laminar_scalar_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        args: *mut FFI_ArrowArray,
        args_schema: *mut FFI_ArrowSchema,
        out: *mut FFI_ArrowArray,
        out_schema: *mut FFI_ArrowSchema,
        error: *mut c_char,
        error_size: usize,
    ) -> c_int,
>;

/// A scalar function to register (`laminar_config_add_scalar_function`,
/// `laminar_db_register_scalar_function`). Fill every field, zero the rest, and set
/// `struct_size = sizeof(laminar_scalar_function)`; LaminarDB copies what it needs during the
/// call.
///
/// Since: 0.1.0
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct laminar_scalar_function {
    /// `sizeof(laminar_scalar_function)` as the caller compiled it; lets the struct grow.
    pub struct_size: u32,
    /// The name SQL calls it by: lowercase letters, digits and `_`, starting with a letter or
    /// `_` (SQL folds unquoted names to lowercase). A built-in function's name is
    /// `LAMINAR_ALREADY_EXISTS`. Borrowed.
    pub name: *const c_char,
    /// The argument types: a struct schema (format `"+s"`) with one child per argument, in
    /// order (the children's names do not matter). Borrowed.
    pub arg_types: *const FFI_ArrowSchema,
    /// The result type: a schema of one field (any name). Borrowed.
    pub return_type: *const FFI_ArrowSchema,
    /// A `LAMINAR_VOLATILITY_*` value.
    pub volatility: laminar_volatility,
    /// The function. Required.
    pub call: laminar_scalar_fn,
    /// Passed as the first argument of `call`; opaque to LaminarDB.
    pub user_data: *mut c_void,
    /// May be NULL. Frees `user_data`, once, when LaminarDB no longer holds the function: after
    /// the configuration it was added to is destroyed and every database opened with it (or the
    /// database it was registered on) is closed and its streams are gone. It may run on any
    /// thread. When registration fails it is not called: `user_data` stays the caller's.
    pub user_data_free: laminar_free_cb,
}

/// What a registered C function holds: the callback and its user data, freed when the last
/// holder lets go.
struct Callback {
    call: unsafe extern "C" fn(
        *mut c_void,
        *mut FFI_ArrowArray,
        *mut FFI_ArrowSchema,
        *mut FFI_ArrowArray,
        *mut FFI_ArrowSchema,
        *mut c_char,
        usize,
    ) -> c_int,
    user_data: *mut c_void,
    free: laminar_free_cb,
    /// False while registration may still fail: then `user_data` stays the caller's.
    armed: std::sync::atomic::AtomicBool,
}

// SAFETY: the caller promises (laminar_scalar_fn) that the callback and user_data may be used
// from any thread, at once from several.
unsafe impl Send for Callback {}
// SAFETY: as above.
unsafe impl Sync for Callback {}

impl Drop for Callback {
    fn drop(&mut self) {
        if let Some(f) = self.free
            && self.armed.load(std::sync::atomic::Ordering::Acquire)
        {
            // SAFETY: called once, with the caller's user_data, as laminar_scalar_function says.
            unsafe { f(self.user_data) };
        }
    }
}

/// How a host language's function computes one batch: the arguments as the columns (`a0`, `a1`,
/// …) of a record batch of the batch's rows; the result column, or the error the calling
/// statement or stream fails with.
pub type HostCall = dyn Fn(RecordBatch) -> datafusion::error::Result<ArrayRef> + Send + Sync;

/// A scalar function whose body is in a host language (C, Go through C, Python, JavaScript):
/// what every binding shares — the arguments as one record batch, the result checked (valid
/// Arrow, one value per row, the declared type) before the engine uses it.
pub struct HostScalar {
    name: String,
    /// "function", "Python function", "JavaScript function": how messages name it.
    kind: &'static str,
    signature: Signature,
    ret: DataType,
    call: Arc<HostCall>,
}

impl std::fmt::Debug for HostScalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostScalar({} '{}')", self.kind, self.name)
    }
}

impl PartialEq for HostScalar {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name && Arc::ptr_eq(&self.call, &o.call)
    }
}
impl Eq for HostScalar {}
impl Hash for HostScalar {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.name.hash(h);
        (Arc::as_ptr(&self.call) as *const () as usize).hash(h);
    }
}

impl HostScalar {
    /// The scalar function `name` of argument types `args`, calling `call` a batch at a time.
    pub fn udf(
        name: &str,
        kind: &'static str,
        args: Vec<DataType>,
        ret: DataType,
        volatility: Volatility,
        call: Arc<HostCall>,
    ) -> ScalarUDF {
        ScalarUDF::new_from_impl(HostScalar {
            name: name.to_string(),
            kind,
            signature: Signature::exact(args, volatility),
            ret,
            call,
        })
    }

    /// The error of a failed call: "<kind> '<name>' failed: <m>".
    pub fn failure(kind: &str, name: &str, m: impl std::fmt::Display) -> DataFusionError {
        DataFusionError::Execution(format!("{kind} '{name}' failed: {m}"))
    }
}

impl ScalarUDFImpl for HostScalar {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(self.ret.clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        let n = args.number_rows;
        let arrays: Vec<ArrayRef> =
            args.args.iter().map(|a| a.to_array(n)).collect::<datafusion::error::Result<_>>()?;
        let fields: Vec<Field> =
            arrays.iter().enumerate().map(|(i, a)| Field::new(format!("a{i}"), a.data_type().clone(), true)).collect();
        let batch = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            arrays,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )?;
        let out = (self.call)(batch)?;
        let fail = |m: String| HostScalar::failure(self.kind, &self.name, m);
        out.to_data().validate_full().map_err(|e| fail(format!("its result is not valid Arrow: {e}")))?;
        if out.len() != n {
            return Err(fail(format!("it returned {} values for {n} rows", out.len())));
        }
        if out.data_type() != &self.ret {
            return Err(fail(format!("it returned {} where {} was declared", out.data_type(), self.ret)));
        }
        Ok(ColumnarValue::Array(out))
    }
}

const ERROR_SIZE: usize = 1024;

/// Calls a C function with one batch.
fn call_c(cb: &Callback, name: &str, batch: RecordBatch) -> datafusion::error::Result<ArrayRef> {
    let fail = |m: String| HostScalar::failure("function", name, m);
    let st = StructArray::from(batch);
    let mut s = FFI_ArrowSchema::try_from(st.data_type())?;
    let mut a = FFI_ArrowArray::new(&st.into_data());
    let mut out = FFI_ArrowArray::empty();
    let mut out_schema = FFI_ArrowSchema::empty();
    let mut msg = [0u8; ERROR_SIZE];
    // SAFETY: every pointer is valid for the call; the callback's contract is the caller's
    // (laminar_scalar_fn). `a` and `s` are released by their Drop unless the callee moved them.
    let rc = unsafe {
        (cb.call)(cb.user_data, &mut a, &mut s, &mut out, &mut out_schema, msg.as_mut_ptr() as *mut c_char, ERROR_SIZE)
    };
    if rc != 0 {
        let end = msg.iter().position(|&b| b == 0).unwrap_or(ERROR_SIZE);
        let text = String::from_utf8_lossy(&msg[..end]);
        return Err(fail(if text.is_empty() { format!("it returned {rc}") } else { text.into_owned() }));
    }
    if out.is_released() {
        return Err(fail("it returned success without a result (out->release == NULL)".into()));
    }
    crate::arrow::check_schema(&out_schema).map_err(|e| fail(format!("its result: {}", e.message())))?;
    // SAFETY: the callee moved a C Data Interface array and its schema into `out`/`out_schema`
    // (contract); from_ffi checks the buffer counts, and the contents are validated before a typed
    // array is made of them.
    let data = unsafe { from_ffi(out, &out_schema) }.map_err(|e| fail(format!("its result: {e}")))?;
    data.validate_full().map_err(|e| fail(format!("its result is not valid Arrow: {e}")))?;
    Ok(make_array(data))
}

fn data_type(s: *const FFI_ArrowSchema, what: &str) -> Result<DataType> {
    if s.is_null() {
        return Err(Error::invalid_argument(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL, a live ArrowSchema (caller contract); checked before arrow-rs reads it.
    let s = unsafe { &*s };
    crate::arrow::check_schema(s).map_err(|e| Error::invalid_argument(format!("{what}: {}", e.message())))?;
    DataType::try_from(s).map_err(|e| Error::invalid_argument(format!("{what}: {e}")))
}

/// Builds the function from the caller's struct; the callback is armed by `register` once the
/// registration succeeded.
///
/// # Safety
/// `f` is NULL or points to `struct_size` readable bytes of a `laminar_scalar_function`.
unsafe fn build(f: *const laminar_scalar_function) -> Result<(ScalarUDF, Arc<Callback>)> {
    if f.is_null() {
        return Err(Error::invalid_argument("function is NULL"));
    }
    // SAFETY: non-NULL; struct_size is the first field of every version of the struct.
    let size = unsafe { (f as *const u32).read_unaligned() } as usize;
    let ours = std::mem::size_of::<laminar_scalar_function>();
    if size < ours {
        return Err(Error::invalid_argument(format!(
            "function->struct_size is {size}; this version of LaminarDB needs at least {ours} (sizeof(laminar_scalar_function)); was it set?"
        )));
    }
    // SAFETY: at least `ours` bytes are readable (struct_size says so).
    let f = unsafe { std::ptr::read_unaligned(f) };
    // SAFETY: NULL or NUL-terminated (caller contract).
    let name = unsafe { crate::error::cstr(f.name, "function->name") }?.to_string();
    let call = f.call.ok_or_else(|| Error::invalid_argument(format!("function '{name}': call is NULL")))?;
    let args = match data_type(f.arg_types, "function->arg_types")? {
        DataType::Struct(fields) => fields.iter().map(|f| f.data_type().clone()).collect::<Vec<_>>(),
        other => {
            return Err(Error::invalid_argument(format!(
                "function '{name}': arg_types must be a struct schema (format \"+s\") with a child per argument, got {other}"
            )));
        }
    };
    let ret = data_type(f.return_type, "function->return_type")?;
    let volatility = match f.volatility {
        LAMINAR_VOLATILITY_IMMUTABLE => Volatility::Immutable,
        LAMINAR_VOLATILITY_STABLE => Volatility::Stable,
        LAMINAR_VOLATILITY_VOLATILE => Volatility::Volatile,
        v => {
            return Err(Error::invalid_argument(format!(
                "function '{name}': volatility {v} is not a LAMINAR_VOLATILITY_* value"
            )));
        }
    };
    let cb = Arc::new(Callback {
        call,
        user_data: f.user_data,
        free: f.user_data_free,
        armed: std::sync::atomic::AtomicBool::new(false),
    });
    let (c, n) = (cb.clone(), name.clone());
    let udf = HostScalar::udf(&name, "function", args, ret, volatility, Arc::new(move |b| call_c(&c, &n, b)));
    Ok((udf, cb))
}

/// Registers through `add`; arms `user_data_free` only when it succeeded.
///
/// # Safety
/// As [`build`].
unsafe fn register(f: *const laminar_scalar_function, add: impl FnOnce(ScalarUDF) -> Result<()>) -> Result<()> {
    // SAFETY: forwarded contract.
    let (udf, cb) = unsafe { build(f) }?;
    add(udf)?;
    cb.armed.store(true, std::sync::atomic::Ordering::Release);
    Ok(())
}

/// Adds a scalar function to a configuration: every database opened with it has the function
/// from the start, so a durable database whose streams call it finds it while it reopens (a
/// stream calling a function the database does not have fails the open with `LAMINAR_PLAN`
/// naming it). A function of the same name replaces the earlier one.
///
/// - `config`: borrowed, serialized. `function`: borrowed; copied (only its first `struct_size`
///   bytes).
///
/// Errors: `LAMINAR_INVALID_ARGUMENT` (NULL pointers, a `struct_size` smaller than this version's,
/// a malformed name or schema, an unknown volatility), `LAMINAR_ALREADY_EXISTS` (a built-in
/// function's name). On failure `user_data` stays the caller's. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_config_add_scalar_function(
    config: *mut laminar_config,
    function: *const laminar_scalar_function,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: NULL or a live handle used by this thread only (caller contract).
        let config = unsafe { handle_mut(config, "config") }?;
        // SAFETY: as `register`.
        unsafe { register(function, |u| config.cfg.add_scalar_function(u)) }
    })
}

/// Registers a scalar function on an open database, for the statements that follow: continuous
/// queries and ad-hoc SQL alike. A stream keeps the function it was planned with; registering
/// another of the same name later changes what new statements get. A durable database that
/// reopens does not remember it: add it to the configuration (`laminar_config_add_scalar_function`)
/// instead, when streams call it.
///
/// - `db`: borrowed. `function`: as `laminar_config_add_scalar_function`.
///
/// Errors: as `laminar_config_add_scalar_function`, plus `LAMINAR_CLOSED`. Thread-safety: any
/// thread. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_db_register_scalar_function(
    db: *mut laminar_db,
    function: *const laminar_scalar_function,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: NULL or a live handle (caller contract).
        let db = unsafe { handle(db, "db") }?;
        // SAFETY: as `register`.
        unsafe { register(function, |u| db.db.database().register_scalar_function(u)) }
    })
}
