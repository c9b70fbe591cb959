//! The kernel builds embedded in the crate, and which one a device loads.
//!
//! build.rs embeds the nvcc build (`FATBIN`: SASS per architecture and PTX) and, when that nvcc is CUDA 13
//! or newer, a CUDA 12 build (`CUDA12_CUBINS`: NVRTC 12 cubins, one per architecture). A driver loads what
//! a toolkit of its own major version or older made: a CUDA 13 fatbin needs a CUDA 13 driver (580+), while
//! CUDA 12 cubins load on every driver from 525 on. So a device takes the nvcc build when its driver is
//! new enough and the CUDA 12 cubin of its architecture otherwise; `MUNJA_CUDA_KERNELS=nvcc` or `cuda12`
//! forces one (to test the CUDA 12 build on a CUDA 13 driver).

use super::module::{FATBIN, NO_NVCC};
use crate::{Device, Error, Result};
use cudarc::driver::sys;
use std::sync::OnceLock;

mod generated {
    include!(concat!(env!("OUT_DIR"), "/kernel_images.rs"));
}
/// The CUDA 12 build: (architecture as in MUNJA_CUDA_ARCHS, cubin). Empty when nvcc was CUDA 12 or older
/// (its own output serves CUDA 12 drivers) or NVRTC 12 was not found.
pub use generated::CUDA12_CUBINS;
/// NVRTC's ptxas -v report of the CUDA 12 build (registers, spills); empty without one.
pub use generated::CUDA12_PTXAS_REPORT;
/// The NVRTC release (major, minor) that built `CUDA12_CUBINS`; (0, 0) when there is no CUDA 12 build.
pub use generated::CUDA12_TOOLKIT;
/// The CUDA release (major, minor) of the nvcc that built `FATBIN`; (0, 0) when built without nvcc.
pub use generated::FATBIN_TOOLKIT;

/// The two builds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Build {
    Nvcc,
    Cuda12,
}

/// What a device loads: the nvcc fatbin, or the CUDA 12 cubin at this index of `CUDA12_CUBINS`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Pick {
    Fatbin,
    Cuda12(usize),
}

/// The builds a binary holds, as `pick` sees them.
pub(crate) struct Builds<'a> {
    pub(crate) fatbin_toolkit: Option<(u32, u32)>,
    pub(crate) cuda12_toolkit: (u32, u32),
    pub(crate) cuda12_archs: Vec<&'a str>,
}

impl Builds<'static> {
    /// The builds embedded in this binary.
    pub(crate) fn embedded() -> Builds<'static> {
        Builds {
            fatbin_toolkit: (!FATBIN.is_empty()).then_some(FATBIN_TOOLKIT),
            cuda12_toolkit: CUDA12_TOOLKIT,
            cuda12_archs: CUDA12_CUBINS.iter().map(|(a, _)| *a).collect(),
        }
    }
}

/// The index of the cubin a device of compute capability `cc` runs: the same major version and the
/// highest minor version at most the device's (SASS runs on later minor versions of its major: sm_80 on
/// sm_86 and sm_89), where an architecture-specific one ("90a") runs only on its own.
fn cubin_for(archs: &[&str], cc: (u32, u32)) -> Option<usize> {
    let parse = |a: &str| {
        let digits: String = a.chars().take_while(|c| c.is_ascii_digit()).collect();
        let n: u32 = digits.parse().ok()?;
        Some((n / 10, n % 10, digits.len() < a.len()))
    };
    archs
        .iter()
        .enumerate()
        .filter_map(|(i, a)| parse(a).map(|(major, minor, specific)| (i, major, minor, specific)))
        .filter(|&(_, major, minor, specific)| major == cc.0 && minor <= cc.1 && (!specific || minor == cc.1))
        .max_by_key(|&(_, _, minor, _)| minor)
        .map(|(i, ..)| i)
}

/// The build a device of compute capability `cc` loads under a driver for CUDA `driver`, or why none fits.
pub(crate) fn pick(
    b: &Builds,
    driver: (u32, u32),
    cc: (u32, u32),
    forced: Option<Build>,
) -> std::result::Result<Pick, String> {
    let cuda12 = || -> std::result::Result<Pick, String> {
        let (t, archs) = (b.cuda12_toolkit, &b.cuda12_archs);
        if archs.is_empty() {
            return Err("this build of munja has no CUDA 12 kernels (build.rs found no NVRTC 12)".into());
        }
        if driver.0 < 12 {
            return Err(format!(
                "the CUDA 12 kernels need a driver for CUDA 12 or newer; this one is CUDA {}.{}",
                driver.0, driver.1
            ));
        }
        cubin_for(archs, cc).map(Pick::Cuda12).ok_or_else(|| {
            format!(
                "the CUDA {}.{} kernels were built for sm_{} only, not this GPU's sm_{}{}: rebuild with its \
                 architecture in MUNJA_CUDA_ARCHS",
                t.0,
                t.1,
                archs.join(", sm_"),
                cc.0,
                cc.1
            )
        })
    };
    let nvcc_fits = b.fatbin_toolkit.is_some_and(|t| driver.0 >= t.0);
    match forced {
        Some(Build::Cuda12) => cuda12(),
        Some(Build::Nvcc) | None if nvcc_fits => Ok(Pick::Fatbin),
        Some(Build::Nvcc) => Err(match b.fatbin_toolkit {
            None => NO_NVCC.into(),
            Some(t) => format!(
                "the nvcc build (CUDA {}.{}) needs a CUDA {} driver; this one is CUDA {}.{}",
                t.0, t.1, t.0, driver.0, driver.1
            ),
        }),
        None => match b.fatbin_toolkit {
            None => Err(NO_NVCC.into()),
            Some(t) if b.cuda12_archs.is_empty() => Err(format!(
                "munja's kernels were built by CUDA {}.{}, which needs a driver for CUDA {} (580 or newer for 13); \
                 this driver is CUDA {}.{}. Update the driver, or rebuild munja with a CUDA 12 build as well \
                 (scripts/setup-nvcc.sh installs NVRTC 12; or set MUNJA_CUDA12_HOME to a CUDA 12 toolkit)",
                t.0, t.1, t.0, driver.0, driver.1
            )),
            Some(_) => cuda12(),
        },
    }
}

/// `MUNJA_CUDA_KERNELS` (read once): "nvcc" or "cuda12" forces that build; unset or empty, the driver
/// decides.
fn forced() -> std::result::Result<Option<Build>, String> {
    static FORCED: OnceLock<std::result::Result<Option<Build>, String>> = OnceLock::new();
    FORCED
        .get_or_init(|| match std::env::var("MUNJA_CUDA_KERNELS").unwrap_or_default().trim() {
            "" => Ok(None),
            "nvcc" => Ok(Some(Build::Nvcc)),
            "cuda12" => Ok(Some(Build::Cuda12)),
            other => Err(format!("MUNJA_CUDA_KERNELS={other}: it takes nvcc or cuda12")),
        })
        .clone()
}

/// The CUDA version the installed driver supports, (major, minor); None without a driver.
pub fn driver_version() -> Option<(u32, u32)> {
    // SAFETY: only tries to dlopen libcuda.
    if !unsafe { sys::is_culib_present() } {
        return None;
    }
    let mut v = 0;
    // SAFETY: one out-parameter; needs no cuInit.
    let status = unsafe { sys::cuDriverGetVersion(&mut v) };
    (status == sys::CUresult::CUDA_SUCCESS && v > 0).then_some((v as u32 / 1000, (v as u32 % 1000) / 10))
}

/// The image a device of compute capability `cc` loads under this machine's driver, and what it is.
pub(crate) fn image_for(device: Device, cc: (u32, u32)) -> Result<(&'static [u8], String)> {
    let unavailable = |detail: String| Error::DeviceUnavailable { op: "cuda", device, detail };
    let driver = driver_version().ok_or_else(|| unavailable("the CUDA driver (libcuda.so) was not found".into()))?;
    let forced = forced().map_err(unavailable)?;
    let at = format!("for a CUDA {}.{} driver", driver.0, driver.1);
    match pick(&Builds::embedded(), driver, cc, forced).map_err(unavailable)? {
        Pick::Fatbin => {
            let (t, archs) = (FATBIN_TOOLKIT, option_env!("MUNJA_CUDA_ARCHS_BUILT").unwrap_or(""));
            Ok((FATBIN, format!("nvcc {}.{} fatbin (sm_{}, PTX) {at}", t.0, t.1, archs.replace(',', ", sm_"))))
        }
        Pick::Cuda12(i) => {
            let (arch, cubin) = CUDA12_CUBINS[i];
            let t = CUDA12_TOOLKIT;
            Ok((cubin, format!("NVRTC {}.{} cubin sm_{arch} {at}", t.0, t.1)))
        }
    }
}

/// Which embedded kernel build a GPU of compute capability `cc` (e.g. (9, 0) for an H100) would load under
/// this machine's driver: for checking a build against a cluster's driver before a job. An `Err` says why
/// none would (no driver, a driver too old for every build, no cubin for that architecture).
pub fn kernel_image_for(compute_capability: (u32, u32)) -> Result<String> {
    image_for(Device::Cuda(0), compute_capability).map(|(_, what)| what)
}

#[cfg(test)]
mod tests {
    use super::{cubin_for, pick, Build, Builds, Pick};

    fn builds(fatbin: Option<(u32, u32)>, cuda12: &[&'static str]) -> Builds<'static> {
        Builds { fatbin_toolkit: fatbin, cuda12_toolkit: (12, 8), cuda12_archs: cuda12.to_vec() }
    }

    #[test]
    fn cubins_run_on_later_minor_versions_of_their_major() {
        let archs = ["80", "90"];
        assert_eq!(cubin_for(&archs, (8, 0)), Some(0));
        assert_eq!(cubin_for(&archs, (8, 6)), Some(0));
        assert_eq!(cubin_for(&archs, (9, 0)), Some(1));
        assert_eq!(cubin_for(&archs, (10, 0)), None);
        assert_eq!(cubin_for(&archs, (7, 5)), None);
        assert_eq!(cubin_for(&["80", "86"], (8, 9)), Some(1));
        // Architecture-specific cubins run only on their own architecture.
        assert_eq!(cubin_for(&["90a"], (9, 0)), Some(0));
        assert_eq!(cubin_for(&["100a"], (10, 3)), None);
    }

    #[test]
    fn the_driver_picks_the_build() {
        let both = builds(Some((13, 0)), &["80", "90"]);
        assert_eq!(pick(&both, (13, 0), (9, 0), None), Ok(Pick::Fatbin));
        assert_eq!(pick(&both, (13, 2), (8, 0), None), Ok(Pick::Fatbin));
        assert_eq!(pick(&both, (12, 2), (9, 0), None), Ok(Pick::Cuda12(1)));
        assert_eq!(pick(&both, (12, 8), (8, 6), None), Ok(Pick::Cuda12(0)));
        // Forced: the CUDA 12 build on a CUDA 13 driver (backward compatibility), never nvcc's on 12.
        assert_eq!(pick(&both, (13, 0), (9, 0), Some(Build::Cuda12)), Ok(Pick::Cuda12(1)));
        assert!(pick(&both, (12, 4), (9, 0), Some(Build::Nvcc)).unwrap_err().contains("needs a CUDA 13 driver"));
        // An nvcc of CUDA 12 serves CUDA 12 and 13 drivers without a second build.
        let cuda12_nvcc = builds(Some((12, 4)), &[]);
        assert_eq!(pick(&cuda12_nvcc, (12, 2), (9, 0), None), Ok(Pick::Fatbin));
        assert_eq!(pick(&cuda12_nvcc, (13, 0), (9, 0), None), Ok(Pick::Fatbin));
    }

    #[test]
    fn a_build_no_driver_can_load_says_what_to_do() {
        let nvcc13 = builds(Some((13, 0)), &[]);
        let e = pick(&nvcc13, (12, 2), (9, 0), None).unwrap_err();
        assert!(e.contains("CUDA 13.0") && e.contains("CUDA 12.2") && e.contains("MUNJA_CUDA12_HOME"), "{e}");
        let both = builds(Some((13, 0)), &["80", "90"]);
        let e = pick(&both, (12, 8), (10, 0), None).unwrap_err();
        assert!(e.contains("sm_100") && e.contains("MUNJA_CUDA_ARCHS"), "{e}");
        assert!(pick(&both, (11, 8), (8, 0), None).unwrap_err().contains("CUDA 11.8"));
        assert!(pick(&builds(None, &[]), (13, 0), (9, 0), None).unwrap_err().contains("without nvcc"));
        assert!(pick(&nvcc13, (13, 0), (9, 0), Some(Build::Cuda12)).unwrap_err().contains("no CUDA 12 kernels"));
    }
}
