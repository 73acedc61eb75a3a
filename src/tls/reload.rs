//! Certificate rotation: one [`Reloader`] per TLS side holds the validated
//! files and the rustls configuration built from them as a snapshot swapped
//! atomically (new handshakes use a new pair at once; handshakes in progress
//! keep theirs).
//!
//! A background task watches the files' directories with inotify AND polls
//! every `poll_interval`, and either way compares the files' *contents* with
//! what is loaded — so Kubernetes' atomic `..data` symlink swap, editors that
//! replace files, and missed events are all seen, and an event that changed
//! nothing costs one read. Events are debounced (`settle`) so that a writer
//! updating the certificate and then the key is seen as one change. A new set
//! is validated before it is used; a bad one keeps the old set, is logged and
//! counted once (not at every poll), and is retried at each poll, so a
//! certificate that is not valid *yet* is picked up when it becomes valid.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::RootCertStore;
use tokio::sync::{Notify, watch};

use super::cert_info::{human_delta, unix_now};
use super::error::LoadError;
use super::load::{Contents, Sources};
use super::validate::{Material, validate};
use super::{ReloadOptions, TlsStatus};

/// Builds a side's rustls configuration from validated material.
pub(crate) type BuildFn<T> = fn(&Sources, &Material) -> Result<T, LoadError>;

/// What is in use now.
pub(crate) struct Snapshot<T> {
    pub(crate) built: T,
    pub(crate) material: Material,
    pub(crate) generation: u64,
    fingerprint: u64,
}

/// The files of one TLS side, what was built from them, and the counters.
pub(crate) struct Reloader<T> {
    /// For logs: `listener` or `upstream library`.
    name: String,
    sources: Sources,
    options: ReloadOptions,
    build: BuildFn<T>,
    system_roots: Option<Arc<RootCertStore>>,
    current: ArcSwap<Snapshot<T>>,
    generation: watch::Sender<u64>,
    reloads: AtomicU64,
    errors: AtomicU64,
    last_error: ArcSwapOption<String>,
    /// Serializes reloads; holds the fingerprint of the last contents that
    /// failed, so the same bad files are counted and logged once.
    last_failed: Mutex<Option<u64>>,
    watching: AtomicBool,
    stop: Arc<Notify>,
    last_expiry_warning: AtomicI64,
}

impl<T: Send + Sync + 'static> Reloader<T> {
    /// Reads, validates and builds the first snapshot.
    pub(crate) fn new(
        name: String,
        sources: Sources,
        options: ReloadOptions,
        build: BuildFn<T>,
        system_roots: Option<Arc<RootCertStore>>,
    ) -> Result<Arc<Self>, LoadError> {
        let contents = Contents::read(&sources)?;
        let material = validate(&sources, &contents, None, system_roots.as_ref())?;
        let built = build(&sources, &material)?;
        let snapshot = Snapshot {
            built,
            material,
            generation: 1,
            fingerprint: contents.fingerprint(),
        };
        let this = Arc::new(Self {
            name,
            sources,
            options,
            build,
            system_roots,
            current: ArcSwap::from_pointee(snapshot),
            generation: watch::Sender::new(1),
            reloads: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_error: ArcSwapOption::empty(),
            last_failed: Mutex::new(None),
            watching: AtomicBool::new(false),
            stop: Arc::new(Notify::new()),
            last_expiry_warning: AtomicI64::new(unix_now()),
        });
        this.warn_expiring();
        Ok(this)
    }

    pub(crate) fn current(&self) -> Arc<Snapshot<T>> {
        self.current.load_full()
    }

    pub(crate) fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub(crate) fn options(&self) -> &ReloadOptions {
        &self.options
    }

    /// Reads the files now; swaps in a new snapshot if they changed and are
    /// valid. `Ok(true)`: swapped; `Ok(false)`: nothing changed.
    pub(crate) fn check_now(&self) -> Result<bool, LoadError> {
        self.check(true)
    }

    /// `check_now`, optionally without counting or logging a rejected set
    /// (for a first look at files that may still be being written).
    fn check(&self, count_errors: bool) -> Result<bool, LoadError> {
        let mut last_failed = self
            .last_failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.current.load_full();
        let attempt = match Contents::read(&self.sources) {
            // An unreadable file has no contents to fingerprint; its error stands in.
            Err(error) => Err((text_fingerprint(&error.to_string()), error)),
            Ok(contents) => {
                let fingerprint = contents.fingerprint();
                if fingerprint == current.fingerprint {
                    Ok((fingerprint, None))
                } else {
                    validate(
                        &self.sources,
                        &contents,
                        Some(&current.material),
                        self.system_roots.as_ref(),
                    )
                    .and_then(|material| Ok(((self.build)(&self.sources, &material)?, material)))
                    .map(|(built, material)| (fingerprint, Some((material, built))))
                    .map_err(|e| (fingerprint, e))
                }
            }
        };
        match attempt {
            Ok((_, None)) => {
                *last_failed = None;
                Ok(false)
            }
            Ok((fingerprint, Some((material, built)))) => {
                *last_failed = None;
                let generation = current.generation + 1;
                let leaf = material.leaf().map(|l| (l.serial.clone(), l.not_after_rfc3339.clone()));
                self.current.store(Arc::new(Snapshot {
                    built,
                    material,
                    generation,
                    fingerprint,
                }));
                self.generation.send_replace(generation);
                self.reloads.fetch_add(1, Ordering::Relaxed);
                match leaf {
                    Some((serial, not_after)) => {
                        tracing::info!(tls = %self.name, generation, %serial, %not_after,
                        "TLS certificates reloaded; new handshakes use them")
                    }
                    None => {
                        tracing::info!(tls = %self.name, generation, "TLS trust roots reloaded")
                    }
                }
                self.warn_expiring();
                Ok(true)
            }
            Err((fingerprint, error)) => {
                if count_errors && *last_failed != Some(fingerprint) {
                    *last_failed = Some(fingerprint);
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    self.last_error.store(Some(Arc::new(error.to_string())));
                    tracing::warn!(tls = %self.name, %error,
                        "new TLS files rejected; the certificates in use stay in use");
                }
                Err(error)
            }
        }
    }

    /// Logs every certificate inside the warning window (or expired).
    fn warn_expiring(&self) {
        let now = unix_now();
        self.last_expiry_warning.store(now, Ordering::Relaxed);
        let window = i64::try_from(self.options.expiry_warning.as_secs()).unwrap_or(i64::MAX);
        for cert in &self.current.load().material.certs {
            let left = cert.seconds_left(now);
            if left < window {
                tracing::warn!(tls = %self.name, certificate = %cert.describe(), not_after = %cert.not_after_rfc3339,
                    "certificate expires {}", human_delta(left));
            }
        }
    }

    pub(crate) fn status(&self) -> TlsStatus {
        let current = self.current.load();
        TlsStatus {
            certificates: current.material.certs.clone(),
            generation: current.generation,
            reloads: self.reloads.load(Ordering::Relaxed),
            reload_errors: self.errors.load(Ordering::Relaxed),
            last_error: self.last_error.load_full().map(|e| e.to_string()),
        }
    }

    /// Starts the watcher task (once; later calls do nothing). It ends when
    /// the last handle to this reloader is dropped.
    pub(crate) fn start_watching(self: &Arc<Self>) {
        if self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.watching.store(false, Ordering::Release);
            tracing::warn!(tls = %self.name, "no async runtime: certificate files are not watched");
            return;
        };
        let dirs = watch_dirs(&self.sources.paths());
        runtime.spawn(watch_loop(
            Arc::downgrade(self),
            self.stop.clone(),
            dirs,
            self.options.clone(),
        ));
    }
}

impl<T> Drop for Reloader<T> {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

fn text_fingerprint(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// The directories holding `paths`: watching a directory (not the file) sees
/// files replaced by rename and Kubernetes' `..data` symlink swap.
fn watch_dirs(paths: &[&Path]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = paths
        .iter()
        .map(|p| match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

async fn watch_loop<T: Send + Sync + 'static>(
    reloader_weak: Weak<Reloader<T>>,
    stop: Arc<Notify>,
    dirs: Vec<PathBuf>,
    options: ReloadOptions,
) {
    let events = Arc::new(Notify::new());
    let _watcher = start_inotify(&dirs, events.clone());
    let mut poll = tokio::time::interval(options.poll_interval.max(Duration::from_millis(10)));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: it catches changes made between loading
    // and watching.
    loop {
        tokio::select! {
            _ = stop.notified() => return,
            _ = poll.tick() => {}
            _ = events.notified() => {
                // Wait until the files have been quiet for `settle`.
                loop {
                    tokio::select! {
                        _ = stop.notified() => return,
                        _ = events.notified() => continue,
                        _ = tokio::time::sleep(options.settle) => break,
                    }
                }
            }
        }
        let Some(reloader) = reloader_weak.upgrade() else {
            return;
        };
        // A set that does not validate may be half written (a certificate
        // replaced a moment before its key): look again once the files have
        // been quiet for `settle`, and only then count and log a rejection.
        if reloader.check(false).is_err() {
            drop(reloader);
            tokio::select! {
                _ = stop.notified() => return,
                _ = tokio::time::sleep(options.settle) => {}
            }
            let Some(reloader) = reloader_weak.upgrade() else {
                return;
            };
            let _ = reloader.check_now();
            continue;
        }
        let day = 86_400;
        if unix_now() - reloader.last_expiry_warning.load(Ordering::Relaxed) >= day {
            reloader.warn_expiring();
        }
    }
}

/// Watches `dirs` with inotify; `None` (polling only) when that fails.
fn start_inotify(dirs: &[PathBuf], events: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    use notify::event::{AccessKind, AccessMode};
    use notify::{EventKind, RecursiveMode, Watcher};
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Reads (ours included) are not changes.
        let relevant = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        };
        if relevant {
            events.notify_one();
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch certificate files; polling only");
            return None;
        }
    };
    for dir in dirs {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a certificate directory; polling it only");
        }
    }
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_directories_are_the_parents_once() {
        let dirs = watch_dirs(&[
            Path::new("/etc/tls/tls.crt"),
            Path::new("/etc/tls/tls.key"),
            Path::new("ca.pem"),
        ]);
        assert_eq!(dirs, vec![PathBuf::from("/etc/tls"), PathBuf::from(".")]);
    }
}
