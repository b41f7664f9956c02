//! What `cuModuleLoadData` reads from an image: the cubin for the chip out
//! of a fatbin, and from that cubin each kernel's name, register count,
//! static shared memory and launch bounds — the numbers a real driver
//! enforces, taken from the real compiler's output.

use std::collections::HashMap;

/// One kernel of a loaded cubin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelImage {
    pub name: String,
    pub registers: i32,
    pub static_shared: i32,
    /// `__launch_bounds__`' maximum threads per block, if it was given.
    pub max_threads: Option<i32>,
    pub param_bytes: Option<i32>,
}

/// Why an image cannot be loaded, with the driver's error for it.
#[derive(Debug, PartialEq, Eq)]
pub enum ImageError {
    /// Not a fatbin or cubin this stand-in reads (`CUDA_ERROR_INVALID_IMAGE`).
    Invalid(String),
    /// No cubin for the chip (`CUDA_ERROR_NO_BINARY_FOR_GPU`): the stand-in
    /// cannot JIT PTX, since it would not know the registers ptxas picks.
    NoBinaryFor(u32),
}

const FATBIN_MAGIC: u32 = 0xBA55_ED50;
const FATBIN_KIND_ELF: u16 = 2;
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

// .nv.info attributes (cuobjdump's EIATTR_* names).
const EIATTR_MAX_THREADS: u8 = 0x05;
const EIATTR_CBANK_PARAM_SIZE: u8 = 0x19;
const EIATTR_REGCOUNT: u8 = 0x2f;
const EIFMT_SVAL: u8 = 0x04;

/// The kernels of `image` (a fatbin or a single cubin) as built for `arch`
/// (90 for sm_90). A fatbin's cubin for the same major version and a lower
/// or equal minor one runs, as on hardware.
///
/// # Safety
/// `image` must point to a complete image: its headers give its length.
pub unsafe fn read_image(image: *const u8, arch: u32) -> Result<Vec<KernelImage>, ImageError> {
    let head = unsafe { std::slice::from_raw_parts(image, 16) };
    if u32::from_le_bytes(head[0..4].try_into().unwrap()) == FATBIN_MAGIC {
        let header = u16::from_le_bytes(head[6..8].try_into().unwrap()) as usize;
        let body = u64::from_le_bytes(head[8..16].try_into().unwrap()) as usize;
        let fatbin = unsafe { std::slice::from_raw_parts(image, header + body) };
        let cubin = pick_cubin(fatbin, header, arch)?;
        kernels(cubin)
    } else if head[0..4] == ELF_MAGIC[..] {
        let length =
            elf_length(head_with_section_table(image)).ok_or_else(|| invalid("truncated ELF header"))?;
        let cubin = unsafe { std::slice::from_raw_parts(image, length) };
        if cubin_arch(cubin)? != arch {
            return Err(ImageError::NoBinaryFor(arch));
        }
        kernels(cubin)
    } else {
        Err(invalid(
            "neither a fatbin nor a cubin (PTX would need the JIT, which the stand-in does not have)",
        ))
    }
}

fn invalid(why: &str) -> ImageError {
    ImageError::Invalid(why.to_string())
}

fn head_with_section_table(image: *const u8) -> &'static [u8] {
    // An ELF64 header is 64 bytes.
    unsafe { std::slice::from_raw_parts(image, 64) }
}

/// Bytes an ELF file spans: its section header table comes last in cubins.
fn elf_length(header: &[u8]) -> Option<usize> {
    let shoff = u64::from_le_bytes(header.get(0x28..0x30)?.try_into().ok()?) as usize;
    let shentsize = u16::from_le_bytes(header.get(0x3a..0x3c)?.try_into().ok()?) as usize;
    let shnum = u16::from_le_bytes(header.get(0x3c..0x3e)?.try_into().ok()?) as usize;
    Some(shoff + shentsize * shnum)
}

/// The best cubin of a fatbin for `arch`: the same major version, the
/// highest minor not above the chip's.
fn pick_cubin(fatbin: &[u8], header: usize, arch: u32) -> Result<&[u8], ImageError> {
    let mut best: Option<(u32, &[u8])> = None;
    let mut at = header;
    while at + 32 <= fatbin.len() {
        let kind = u16::from_le_bytes(fatbin[at..at + 2].try_into().unwrap());
        let entry_header = u32::from_le_bytes(fatbin[at + 4..at + 8].try_into().unwrap()) as usize;
        let size = u64::from_le_bytes(fatbin[at + 8..at + 16].try_into().unwrap()) as usize;
        let entry_arch = u32::from_le_bytes(fatbin[at + 28..at + 32].try_into().unwrap());
        let payload = fatbin
            .get(at + entry_header..at + entry_header + size)
            .ok_or_else(|| invalid("fatbin entry runs past the image"))?;
        let runs = entry_arch / 10 == arch / 10 && entry_arch <= arch;
        if kind == FATBIN_KIND_ELF && runs && best.is_none_or(|(a, _)| entry_arch > a) {
            if payload.get(0..4) != Some(&ELF_MAGIC[..]) {
                return Err(invalid("compressed cubins are not supported"));
            }
            best = Some((entry_arch, payload));
        }
        at += entry_header + size;
    }
    best.map(|(_, cubin)| cubin).ok_or(ImageError::NoBinaryFor(arch))
}

struct Section<'a> {
    name: &'a str,
    size: usize,
    data: &'a [u8],
}

fn cubin_arch(elf: &[u8]) -> Result<u32, ImageError> {
    let flags = u32::from_le_bytes(
        elf.get(0x30..0x34)
            .ok_or_else(|| invalid("short ELF"))?
            .try_into()
            .unwrap(),
    );
    // ELF ABI version 8 (CUDA 12.8 and newer) keeps the SM in bits 8..16.
    let abi = *elf.get(8).ok_or_else(|| invalid("short ELF"))?;
    Ok(if abi >= 8 {
        (flags >> 8) & 0xff
    } else {
        flags & 0xff
    })
}

fn sections(elf: &[u8]) -> Result<Vec<Section<'_>>, ImageError> {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    if elf.len() < 64 || elf_length(elf).is_none_or(|l| l > elf.len()) {
        return Err(invalid("truncated cubin"));
    }
    let (shoff, shentsize, shnum, shstrndx) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let strtab_offset = u64_at(header(shstrndx) + 0x18);
    let mut out = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let h = header(i);
        let (name_at, kind, offset, size) = (u32_at(h), u32_at(h + 4), u64_at(h + 0x18), u64_at(h + 0x20));
        let name_start = strtab_offset + name_at;
        let name_len = elf[name_start..]
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| invalid("bad section name"))?;
        let name = std::str::from_utf8(&elf[name_start..name_start + name_len])
            .map_err(|_| invalid("bad section name"))?;
        const SHT_NOBITS: usize = 8;
        let data = if kind == SHT_NOBITS {
            &[][..]
        } else {
            elf.get(offset..offset + size)
                .ok_or_else(|| invalid("section runs past the cubin"))?
        };
        out.push(Section { name, size, data });
    }
    Ok(out)
}

/// A `.nv.info` record: its attribute, and its value — a 16-bit one in the
/// header, or bytes after it (the sized format).
struct InfoRecord<'a> {
    attribute: u8,
    short: u16,
    bytes: &'a [u8],
}

fn info_records(data: &[u8]) -> Vec<InfoRecord<'_>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= data.len() {
        let (format, attribute) = (data[at], data[at + 1]);
        let short = u16::from_le_bytes([data[at + 2], data[at + 3]]);
        let mut bytes = &[][..];
        at += 4;
        if format == EIFMT_SVAL {
            let Some(sized) = data.get(at..at + short as usize) else {
                break;
            };
            bytes = sized;
            at += short as usize;
        }
        out.push(InfoRecord {
            attribute,
            short,
            bytes,
        });
    }
    out
}

fn word(bytes: &[u8], i: usize) -> Option<i32> {
    Some(i32::from_le_bytes(bytes.get(4 * i..4 * i + 4)?.try_into().ok()?))
}

fn kernels(elf: &[u8]) -> Result<Vec<KernelImage>, ImageError> {
    let sections = sections(elf)?;
    let symbols = symbol_names(&sections)?;
    // Registers are listed in the module-wide .nv.info, by symbol index.
    let mut registers: HashMap<&str, i32> = HashMap::new();
    for section in sections.iter().filter(|s| s.name == ".nv.info") {
        for record in info_records(section.data) {
            if record.attribute == EIATTR_REGCOUNT {
                if let (Some(symbol), Some(count)) = (word(record.bytes, 0), word(record.bytes, 1)) {
                    if let Some(name) = symbols.get(symbol as usize) {
                        registers.insert(name, count);
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    for text in sections.iter().filter(|s| s.name.starts_with(".text.")) {
        let name = &text.name[".text.".len()..];
        let size_of = |prefix: &str| {
            sections
                .iter()
                .find(|s| s.name.strip_prefix(prefix) == Some(name))
                .map(|s| s.size as i32)
        };
        let info = sections
            .iter()
            .find(|s| s.name.strip_prefix(".nv.info.") == Some(name))
            .map(|s| info_records(s.data))
            .unwrap_or_default();
        let find = |attribute: u8| info.iter().find(|r| r.attribute == attribute);
        out.push(KernelImage {
            name: name.to_string(),
            registers: *registers
                .get(name)
                .ok_or_else(|| invalid(&format!("no register count for {name}")))?,
            static_shared: size_of(".nv.shared.").unwrap_or(0),
            max_threads: find(EIATTR_MAX_THREADS).and_then(|r| word(r.bytes, 0)),
            param_bytes: find(EIATTR_CBANK_PARAM_SIZE).map(|r| r.short as i32),
        });
    }
    if out.is_empty() {
        return Err(invalid("the cubin has no kernels"));
    }
    Ok(out)
}

/// Symbol names by index, from `.symtab` and `.strtab`.
fn symbol_names<'a>(sections: &[Section<'a>]) -> Result<Vec<&'a str>, ImageError> {
    let table = sections
        .iter()
        .find(|s| s.name == ".symtab")
        .ok_or_else(|| invalid("no .symtab"))?;
    let strings = sections
        .iter()
        .find(|s| s.name == ".strtab")
        .ok_or_else(|| invalid("no .strtab"))?;
    let mut out = Vec::new();
    for entry in table.data.chunks_exact(24) {
        let at = u32::from_le_bytes(entry[0..4].try_into().unwrap()) as usize;
        let tail = strings.data.get(at..).unwrap_or(&[]);
        let len = tail.iter().position(|&b| b == 0).unwrap_or(0);
        out.push(std::str::from_utf8(&tail[..len]).unwrap_or(""));
    }
    Ok(out)
}
