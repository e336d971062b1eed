//! The pooling allocator's slot reset (vendor/wasmtime-pagemap-scan.patch) with swap: a page a
//! request wrote that the kernel swapped out is still that request's data, and the next
//! instance in the slot must not read it. The scan used to report only written pages that were
//! *present*, so a swapped-out one was neither reset nor decommitted (boards with zram swap).
//!
//! The test adds a swap file of its own for its duration (as root; CI runs it so), has a guest
//! write a secret over its memory, pushes those pages out with `madvise(MADV_PAGEOUT)`, ends the
//! instance and reads the memory in a fresh one in the same slot. Where swap cannot be had (not
//! root, a container, a file system without swap files, pages that stay in memory) it prints
//! "could not run: ..." and passes: it never fails for lack of swap.
#![cfg(target_os = "linux")]

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ledge::runtime::{Allocator, Profile, Runtime, RuntimeOptions};
use wasmtime::{Instance, Module, Store};

/// The guest's memory, in wasm pages: 16 MiB.
const MEMORY_PAGES: u64 = 256;
/// What the guest writes over its memory from address 0: 8 MiB of `SECRET`, over its data
/// segment and beyond it (2,048 pages of 4 KiB: more than the small profile keeps resident).
const SECRET_LEN: usize = 8 << 20;
const SECRET: u8 = 0x5a;
/// The data segment at address 0 (the slot's copy-on-write image): the reset copies the image
/// back into these pages and zeroes the rest.
const IMAGE_LEN: usize = 3 * 4096 + 100;
/// The test's own swap file.
const SWAP_BYTES: usize = 64 << 20;

#[test]
fn a_dirty_page_the_kernel_swapped_out_is_reset_for_the_next_instance_in_the_slot() {
    let swap = match SwapFile::on() {
        Ok(swap) => swap,
        Err(why) => {
            println!("could not run: {why}");
            return;
        }
    };
    let scan = if kernel_has_pagemap_scan() { "has PAGEMAP_SCAN" } else { "lacks PAGEMAP_SCAN (no scan to test)" };
    println!("swap file {} on; the kernel {scan}", swap.path.display());
    // Standard keeps 16 MiB resident (every secret page is reset in place); small keeps 1 MiB
    // (256 pages reset in place, the rest decommitted).
    for profile in [Profile::Standard, Profile::Small] {
        let options = RuntimeOptions { max_instances: 1, ..RuntimeOptions::for_profile(profile) };
        let runtime = Runtime::new(&options, Arc::default(), None).expect("a runtime");
        if runtime.allocator() != Allocator::Pooling {
            println!("could not run: the pooling allocator is unavailable here ({profile:?} profile)");
            return;
        }
        if let Err(why) = scribble_swap_out_and_reuse(&runtime, profile) {
            println!("could not run: {why}");
            return;
        }
    }
    drop(swap);
}

/// One guest writes the secret and has it swapped out; the next, in the same slot, must see
/// only its image and zeros. `Err` when the pages could not be put in swap.
fn scribble_swap_out_and_reuse(runtime: &Runtime, profile: Profile) -> Result<(), String> {
    let page = host_page_size();
    let module = Module::new(runtime.engine(), module_bytes()).expect("the test module compiles");

    let mut store = Store::new(runtime.engine(), ());
    store.set_epoch_deadline(1 << 40);
    let instance = Instance::new(&mut store, &module, &[]).expect("an instance");
    let fill = instance.get_typed_func::<(i32, i32, i32), ()>(&mut store, "fill").unwrap();
    fill.call(&mut store, (0, i32::from(SECRET), SECRET_LEN as i32)).expect("the guest writes its secret");
    let memory = instance.get_memory(&mut store, "mem").unwrap();
    assert!(memory.data(&store)[..SECRET_LEN].iter().all(|&byte| byte == SECRET));
    let base = memory.data_ptr(&store);
    // SAFETY: the range is the instance's accessible linear memory; paging it out changes
    // where its contents are, not what they are.
    if unsafe { libc::madvise(base.cast(), SECRET_LEN, libc::MADV_PAGEOUT) } != 0 {
        return Err(format!("madvise(MADV_PAGEOUT): {}", std::io::Error::last_os_error()));
    }
    let swapped = swapped_pages(base, SECRET_LEN / page)?;
    if swapped == 0 {
        return Err(format!("none of the guest's {} dirty pages went to swap", SECRET_LEN / page));
    }
    drop(store); // The instance ends: its slot is reset.

    let mut store = Store::new(runtime.engine(), ());
    store.set_epoch_deadline(1 << 40);
    let instance = Instance::new(&mut store, &module, &[]).expect("an instance");
    let memory = instance.get_memory(&mut store, "mem").unwrap();
    assert_eq!(memory.data_ptr(&store), base, "the next instance of the module got another slot");
    let data = &memory.data(&store)[..SECRET_LEN];
    let expected = |at: usize| if at < IMAGE_LEN { image_byte(at) } else { 0 };
    let wrong: Vec<usize> =
        (0..SECRET_LEN / page).filter(|&p| (p * page..(p + 1) * page).any(|at| data[at] != expected(at))).collect();
    let secret = wrong.iter().filter(|&&p| data[p * page..(p + 1) * page].iter().all(|&b| b == SECRET)).count();
    println!(
        "{profile:?} profile: {swapped} of the {} dirty pages were in swap at the reset; the next instance found {} \
         pages not pristine ({secret} holding the secret)",
        SECRET_LEN / page,
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "{profile:?}: pages {:?}... not reset ({secret} still hold the secret)",
        &wrong[..10.min(wrong.len())]
    );
    Ok(())
}

fn image_byte(at: usize) -> u8 {
    (at % 251) as u8 + 1
}

/// A core module: memory `mem` of `MEMORY_PAGES` with `IMAGE_LEN` bytes of data at 0, and
/// `fill(dest, value, len)`, a `memory.fill`.
fn module_bytes() -> Vec<u8> {
    fn leb(out: &mut Vec<u8>, mut value: u64) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn section(out: &mut Vec<u8>, id: u8, body: &[u8]) {
        out.push(id);
        leb(out, body.len() as u64);
        out.extend_from_slice(body);
    }
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(&mut module, 1, &[1, 0x60, 3, 0x7f, 0x7f, 0x7f, 0]); // type 0: (i32, i32, i32) -> ()
    section(&mut module, 3, &[1, 0]); // func 0: type 0
    let mut memory = vec![1, 0];
    leb(&mut memory, MEMORY_PAGES);
    section(&mut module, 5, &memory);
    section(&mut module, 7, &[2, 3, b'm', b'e', b'm', 2, 0, 4, b'f', b'i', b'l', b'l', 0, 0]);
    // local.get 0, local.get 1, local.get 2, memory.fill 0, end
    let body = [0, 0x20, 0, 0x20, 1, 0x20, 2, 0xfc, 0x0b, 0, 0x0b];
    let mut code = vec![1, body.len() as u8];
    code.extend_from_slice(&body);
    section(&mut module, 10, &code);
    let mut data = vec![1, 0, 0x41, 0, 0x0b]; // active, memory 0, at i32.const 0
    leb(&mut data, IMAGE_LEN as u64);
    data.extend((0..IMAGE_LEN).map(image_byte));
    section(&mut module, 11, &data);
    module
}

fn host_page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap()
}

/// How many of the `pages` host pages from `base` are swapped out (bit 62 of their
/// /proc/self/pagemap entries).
fn swapped_pages(base: *mut u8, pages: usize) -> Result<usize, String> {
    let pagemap = File::open("/proc/self/pagemap").map_err(|e| format!("/proc/self/pagemap: {e}"))?;
    let mut entries = vec![0u8; pages * 8];
    let offset = (base.addr() / host_page_size() * 8) as u64;
    pagemap.read_exact_at(&mut entries, offset).map_err(|e| format!("reading /proc/self/pagemap: {e}"))?;
    Ok(entries.chunks_exact(8).filter(|e| u64::from_ne_bytes((*e).try_into().unwrap()) & (1 << 62) != 0).count())
}

/// Whether this kernel has the PAGEMAP_SCAN ioctl (Linux 6.7+): the same probe wasmtime makes.
fn kernel_has_pagemap_scan() -> bool {
    #[repr(C)]
    struct PmScanArg {
        size: u64,
        flags: u64,
        start: u64,
        end: u64,
        walk_end: u64,
        vec: u64,
        vec_len: u64,
        max_pages: u64,
        category_inverted: u64,
        category_mask: u64,
        category_anyof_mask: u64,
        return_mask: u64,
    }
    const PAGEMAP_SCAN: u32 = 0xc060_6610; // _IOWR('f', 16, struct pm_scan_arg)
    let Ok(pagemap) = File::open("/proc/self/pagemap") else { return false };
    let mut region = [0u64; 3];
    let mut arg = PmScanArg {
        size: size_of::<PmScanArg>() as u64,
        flags: 0,
        start: 0,
        end: 0,
        walk_end: 0,
        vec: region.as_mut_ptr().addr() as u64,
        vec_len: 1,
        max_pages: 1,
        category_inverted: 0,
        category_mask: 0xff,
        category_anyof_mask: 0,
        return_mask: 0,
    };
    // SAFETY: an empty range; the kernel writes at most one region into `region`.
    unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) == 0 }
}

/// A swap file in use for the test's duration: `swapoff` and removed when dropped, whatever
/// happened in between.
struct SwapFile {
    path: PathBuf,
    _file: Removed,
}

/// A file removed when dropped.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl SwapFile {
    fn on() -> Result<SwapFile, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root, so no swap file can be added".into());
        }
        // Beside the build, on a disk: a tmpfs /tmp cannot hold a swap file.
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("slot-reset-swap-{}", std::process::id()));
        let removed = Removed(path.clone());
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        // Written out, not sparse: swapon refuses a file with holes.
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..SWAP_BYTES / zeros.len() {
            file.write_all(&zeros).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        file.sync_all().map_err(|e| format!("syncing {}: {e}", path.display()))?;
        drop(file);
        let mkswap = ["mkswap", "/usr/sbin/mkswap", "/sbin/mkswap"]
            .iter()
            .find_map(|program| Command::new(program).arg(&path).output().ok())
            .ok_or("no mkswap found")?;
        if !mkswap.status.success() {
            return Err(format!("mkswap {}: {}", path.display(), String::from_utf8_lossy(&mkswap.stderr).trim()));
        }
        let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::swapon(c_path.as_ptr(), 0) } != 0 {
            return Err(format!("swapon {}: {}", path.display(), std::io::Error::last_os_error()));
        }
        Ok(SwapFile { path, _file: removed })
    }
}

impl Drop for SwapFile {
    fn drop(&mut self) {
        let c_path = CString::new(self.path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::swapoff(c_path.as_ptr()) } != 0 {
            eprintln!("swapoff {}: {}", self.path.display(), std::io::Error::last_os_error());
        }
    }
}
