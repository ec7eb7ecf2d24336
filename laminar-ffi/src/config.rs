//! Configuration: string key/values, validated as they are set (DESIGN §5). One `Config` serves
//! both for opening a database and as per-subscription options (`buffer_size`, `on_full`,
//! `resume_after_epoch`).

use std::ffi::{CString, c_char};
use std::sync::OnceLock;

use laminar_core::config::{CONFIG_KEYS, describe_key};
use laminar_core::{Error, OnFull, Result, SubscribeOptions};

use crate::error::{
    LAMINAR_INVALID_ARGUMENT, LAMINAR_OK, cstr, guard, guard_void, handle, handle_mut, laminar_error, laminar_status,
    out_ptr,
};

/// Keys a subscription accepts as options.
pub const SUBSCRIPTION_KEYS: &[&str] = &["buffer_size", "on_full", "resume_after_epoch"];

/// String key/values, checked against the engine's keys and value forms when set.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pairs: Vec<(String, String)>,
    checked: laminar_core::Config,
    /// A subscription option only: results of epochs after this one first (durable databases).
    resume_after_epoch: Option<u64>,
}

impl Config {
    pub fn new() -> Config {
        Config::default()
    }

    /// Sets a key (`"workers"`, `"4"`); an unknown key or malformed value is INVALID_ARGUMENT.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        if key == "resume_after_epoch" {
            let e = value.trim().parse::<u64>().map_err(|_| {
                Error::invalid_argument(format!("config 'resume_after_epoch': expected an epoch number, got '{value}'"))
            })?;
            self.resume_after_epoch = Some(e);
        } else {
            self.checked.set(key, value)?;
        }
        self.pairs.retain(|(k, _)| k != key);
        self.pairs.push((key.to_string(), value.to_string()));
        Ok(())
    }

    /// Adds a scalar function for every database opened with this configuration.
    pub fn add_scalar_function(&mut self, f: datafusion::logical_expr::ScalarUDF) -> Result<()> {
        self.checked.register_scalar_function(f)
    }

    /// The value set for `key`, as given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The keys set, in order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// The engine configuration these settings give; a subscription-only key is refused.
    pub fn to_core(&self) -> Result<laminar_core::Config> {
        if self.resume_after_epoch.is_some() {
            return Err(Error::invalid_argument(
                "'resume_after_epoch' is a subscription option, not a database setting",
            ));
        }
        Ok(self.checked.clone())
    }

    /// These settings as subscription options; keys other than `buffer_size`, `on_full` and
    /// `resume_after_epoch` are INVALID_ARGUMENT.
    pub fn subscribe_options(&self) -> Result<SubscribeOptions> {
        let mut o = SubscribeOptions::default();
        for (k, _) in &self.pairs {
            match k.as_str() {
                "buffer_size" => o.buffer_size = Some(self.checked.buffer_size),
                "on_full" => o.on_full = Some(self.checked.on_full),
                "resume_after_epoch" => o.resume_after_epoch = self.resume_after_epoch,
                _ => {
                    return Err(Error::invalid_argument(format!(
                        "'{k}' is not a subscription option (subscription options: {})",
                        SUBSCRIPTION_KEYS.join(", ")
                    )));
                }
            }
        }
        Ok(o)
    }
}

/// Parses `lag`/`block` (for bindings that take the option as a string).
pub fn parse_on_full(v: &str) -> Result<OnFull> {
    let mut c = laminar_core::Config::default();
    c.set("on_full", v)?;
    Ok(c.on_full)
}

/// Configuration key/values for `laminar_db_open` and the subscribe calls. Serialized access: one
/// thread at a time. Must be destroyed with `laminar_config_destroy`.
///
/// Since: 0.1.0
#[allow(non_camel_case_types)]
pub struct laminar_config {
    pub(crate) cfg: Config,
    last_get: Option<CString>,
}

fn key_docs() -> &'static [(CString, CString)] {
    static DOCS: OnceLock<Vec<(CString, CString)>> = OnceLock::new();
    DOCS.get_or_init(|| {
        CONFIG_KEYS
            .iter()
            .map(|k| (CString::new(*k).unwrap(), CString::new(describe_key(k).unwrap_or("")).unwrap()))
            .collect()
    })
}

/// Creates an empty configuration (every key at its default).
///
/// - `out`: caller-owned output; receives the new handle, or NULL on failure.
///
/// Errors: `LAMINAR_INVALID_ARGUMENT` when `out` is NULL. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_config_create(
    out: *mut *mut laminar_config,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: NULL or writable (caller contract).
        let out = unsafe { out_ptr(out, "out") }?;
        *out = Box::into_raw(Box::new(laminar_config { cfg: Config::new(), last_get: None }));
        Ok(())
    })
}

/// Destroys a configuration. A no-op for NULL. Databases opened with it do not need it any more.
///
/// - `config`: consumed.
///
/// Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_config_destroy(config: Option<Box<laminar_config>>) {
    guard_void(|| drop(config));
}

/// Sets `key` to `value` (`"workers"`, `"4"`; `"checkpoint_interval"`, `"5s"`;
/// `"memory_limit"`, `"512MB"`). Both strings are checked now: an unknown key (the message
/// suggests the nearest known one) or a malformed value is `LAMINAR_INVALID_ARGUMENT` and leaves
/// the configuration unchanged.
///
/// - `config`: borrowed, serialized access. `key`, `value`: borrowed, NUL-terminated UTF-8.
///
/// Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_config_set(
    config: *mut laminar_config,
    key: *const c_char,
    value: *const c_char,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: pointers are NULL or valid per the contract above.
        let (config, key, value) = unsafe { (handle_mut(config, "config")?, cstr(key, "key")?, cstr(value, "value")?) };
        config.cfg.set(key, value)
    })
}

/// The value set for `key`, as given to `laminar_config_set`; `*out` is NULL when the key was not
/// set (its default applies).
///
/// - `config`: borrowed. `key`: borrowed.
/// - `out`: receives a string borrowed from `config`, valid until the next call on `config`.
///
/// Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_config_get(
    config: *mut laminar_config,
    key: *const c_char,
    out: *mut *const c_char,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: pointers are NULL or valid per the contract above.
        let (config, key) = unsafe { (handle_mut(config, "config")?, cstr(key, "key")?) };
        // SAFETY: NULL or writable.
        let out = unsafe { out.as_mut() }.ok_or_else(|| Error::invalid_argument("out is NULL"))?;
        config.last_get = config.cfg.get(key).map(|v| CString::new(v).unwrap_or_default());
        *out = config.last_get.as_ref().map(|c| c.as_ptr()).unwrap_or(std::ptr::null());
        Ok(())
    })
}

/// The number of configuration keys LaminarDB knows (for `laminar_config_get_flag`).
///
/// Thread-safety: any thread. Since: 0.1.0
#[unsafe(no_mangle)]
pub extern "C" fn laminar_config_count() -> usize {
    CONFIG_KEYS.len()
}

/// The name and a one-line description (unit, default) of the `index`-th known key.
///
/// - `out_name`, `out_description`: receive static strings (never freed); either may be NULL.
///
/// Errors: `LAMINAR_INVALID_ARGUMENT` when `index >= laminar_config_count()`.
/// Thread-safety: any thread. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_config_get_flag(
    index: usize,
    out_name: *mut *const c_char,
    out_description: *mut *const c_char,
) -> laminar_status {
    let Ok(Some((name, desc))) = crate::error::catch(|| Ok(key_docs().get(index))) else {
        return LAMINAR_INVALID_ARGUMENT;
    };
    // SAFETY: each output is NULL or writable (caller contract).
    unsafe {
        if let Some(o) = out_name.as_mut() {
            *o = name.as_ptr();
        }
        if let Some(o) = out_description.as_mut() {
            *o = desc.as_ptr();
        }
    }
    LAMINAR_OK
}

/// The settings of an optional config argument (NULL: defaults).
///
/// # Safety
/// `config` is NULL or a live `laminar_config`.
pub(crate) unsafe fn optional(config: *const laminar_config) -> Result<Config> {
    if config.is_null() {
        return Ok(Config::new());
    }
    // SAFETY: non-NULL live handle (caller contract).
    Ok(unsafe { handle(config, "config") }?.cfg.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn set_validates_and_get_returns_what_was_set() {
        let mut cfg = std::ptr::null_mut();
        assert_eq!(unsafe { laminar_config_create(&mut cfg, std::ptr::null_mut()) }, LAMINAR_OK);
        assert_eq!(
            unsafe { laminar_config_set(cfg, c"workers".as_ptr(), c"3".as_ptr(), std::ptr::null_mut()) },
            LAMINAR_OK
        );
        let mut err = std::ptr::null_mut();
        assert_eq!(
            unsafe { laminar_config_set(cfg, c"wrokers".as_ptr(), c"3".as_ptr(), &mut err) },
            LAMINAR_INVALID_ARGUMENT
        );
        let msg = unsafe { CStr::from_ptr(crate::error::laminar_error_message(err)) }.to_str().unwrap().to_string();
        assert!(msg.contains("did you mean 'workers'"), "{msg}");
        unsafe { crate::error::laminar_error_destroy(Some(Box::from_raw(err))) };
        let mut v = std::ptr::null();
        assert_eq!(unsafe { laminar_config_get(cfg, c"workers".as_ptr(), &mut v, std::ptr::null_mut()) }, LAMINAR_OK);
        assert_eq!(unsafe { CStr::from_ptr(v) }.to_str().unwrap(), "3");
        assert_eq!(
            unsafe { laminar_config_get(cfg, c"buffer_size".as_ptr(), &mut v, std::ptr::null_mut()) },
            LAMINAR_OK
        );
        assert!(v.is_null());
        assert_eq!(unsafe { &*cfg }.cfg.to_core().unwrap().workers, 3);
        unsafe { laminar_config_destroy(Some(Box::from_raw(cfg))) };
    }

    #[test]
    fn every_known_key_has_a_description_and_only_two_are_subscription_options() {
        assert_eq!(laminar_config_count(), CONFIG_KEYS.len());
        for i in 0..laminar_config_count() {
            let (mut n, mut d) = (std::ptr::null(), std::ptr::null());
            assert_eq!(unsafe { laminar_config_get_flag(i, &mut n, &mut d) }, LAMINAR_OK);
            assert!(!unsafe { CStr::from_ptr(d) }.to_bytes().is_empty());
        }
        assert_eq!(
            unsafe { laminar_config_get_flag(CONFIG_KEYS.len(), std::ptr::null_mut(), std::ptr::null_mut()) },
            LAMINAR_INVALID_ARGUMENT
        );
        let mut c = Config::new();
        c.set("on_full", "block").unwrap();
        assert_eq!(c.subscribe_options().unwrap().on_full, Some(OnFull::Block));
        c.set("workers", "2").unwrap();
        assert!(c.subscribe_options().unwrap_err().message().contains("not a subscription option"));
    }
}
