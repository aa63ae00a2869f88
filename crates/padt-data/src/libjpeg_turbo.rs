//! JPEG decoding with libjpeg-turbo's decoder (the MozJPEG 4 fork vendored and compiled by the
//! `mozjpeg-sys` crate with `cc`; no NASM, no system library), set up as Pillow sets it up:
//! default `JDCT_ISLOW` IDCT, fancy upsampling, warnings silenced, a truncated file is an error.
//! Pillow decodes with libjpeg-turbo too, so the pixels are Pillow's bit for bit
//! (`tests/image_goldens.rs` checks every fixture JPEG).
//!
//! libjpeg reports fatal errors through `error_exit`, which must not return: ours unwinds (the C
//! code is compiled with `-fexceptions` and declared `C-unwind`) with a private payload that
//! [`decode`] catches, so a corrupt file becomes an `Err`, never a panic or a process exit.

use std::ffi::{c_int, CStr};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use mozjpeg_sys as sys;

/// The unwinding payload of a libjpeg error: its formatted message.
struct LibjpegFailure(String);

/// What libjpeg handed back for one image.
pub(crate) enum Decoded {
    /// `[height, width, 3]` RGB (YCbCr and RGB files; libjpeg converts).
    Rgb {
        width: usize,
        height: usize,
        data: Vec<u8>,
    },
    /// `[height, width]` grayscale.
    Gray {
        width: usize,
        height: usize,
        data: Vec<u8>,
    },
    /// A CMYK or YCCK file: left to the caller's other decoder.
    Cmyk,
}

/// libjpeg's message for the error or warning now in `cinfo.err`.
///
/// # Safety
/// `cinfo.err` points to a live `jpeg_error_mgr` set up by `jpeg_std_error`.
unsafe fn message(cinfo: &mut sys::jpeg_common_struct) -> String {
    let mut buffer = [0u8; 80]; // JMSG_LENGTH_MAX
    if let Some(format) = (*cinfo.err).format_message {
        // The binding declares the output buffer `&[u8; 80]`; libjpeg writes into it, so hand it
        // a pointer to a mutable buffer through the ABI-identical signature.
        type FormatFn = unsafe extern "C-unwind" fn(&mut sys::jpeg_common_struct, *mut u8);
        let format: FormatFn = std::mem::transmute(format);
        format(cinfo, buffer.as_mut_ptr());
    }
    CStr::from_bytes_until_nul(&buffer)
        .map(|m| m.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("libjpeg error code {}", (*cinfo.err).msg_code))
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut sys::jpeg_common_struct) {
    let reason = message(cinfo);
    // `resume_unwind` skips the panic hook: nothing is printed for a corrupt file.
    resume_unwind(Box::new(LibjpegFailure(reason)));
}

/// Warnings are ignored (Pillow silences them too) except running out of data: libjpeg would pad
/// the image with grey, Pillow raises "image file is truncated".
unsafe extern "C-unwind" fn emit_message(cinfo: &mut sys::jpeg_common_struct, msg_level: c_int) {
    if msg_level < 0 && (*cinfo.err).msg_code == sys::JWRN_JPEG_EOF as c_int {
        resume_unwind(Box::new(LibjpegFailure(
            "premature end of JPEG data (the file is truncated)".to_string(),
        )));
    }
}

/// Decodes a JPEG held in memory. `check_size(width, height)` runs after the header is read and
/// before any pixel is allocated; its error is returned as is.
pub(crate) fn decode<E>(
    bytes: &[u8],
    check_size: impl FnOnce(usize, usize) -> Result<(), E>,
    decode_error: impl Fn(String) -> E,
) -> Result<Decoded, E> {
    // Both structs are boxed: libjpeg keeps pointers to them (`cinfo.err`, the source manager).
    // SAFETY: all-zero is the state libjpeg expects before `jpeg_std_error` / `jpeg_CreateDecompress`.
    let mut err: Box<sys::jpeg_error_mgr> = Box::new(unsafe { std::mem::zeroed() });
    let mut cinfo: Box<sys::jpeg_decompress_struct> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: `err` outlives `cinfo`'s use below (both dropped at the end of this function, after
    // `jpeg_destroy_decompress`).
    unsafe {
        sys::jpeg_std_error(&mut err);
        err.error_exit = Some(error_exit);
        err.emit_message = Some(emit_message);
        cinfo.common.err = &mut *err;
    }
    let mut size_error = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: libjpeg's documented call sequence on a zeroed, error-managed struct; the input
        // slice outlives the decoder; every output row pointer points into `data`, which holds
        // `height` rows of `width · components` bytes.
        unsafe {
            sys::jpeg_create_decompress(&mut *cinfo);
            sys::jpeg_mem_src(&mut cinfo, bytes.as_ptr(), bytes.len() as _);
            sys::jpeg_read_header(&mut cinfo, 1);
            let (width, height) = (cinfo.image_width as usize, cinfo.image_height as usize);
            if let Err(e) = check_size(width, height) {
                size_error = Some(e);
                return None;
            }
            let (out_space, components) = match cinfo.jpeg_color_space {
                sys::J_COLOR_SPACE::JCS_CMYK | sys::J_COLOR_SPACE::JCS_YCCK => {
                    return Some(Decoded::Cmyk)
                }
                sys::J_COLOR_SPACE::JCS_GRAYSCALE => (sys::J_COLOR_SPACE::JCS_GRAYSCALE, 1),
                _ => (sys::J_COLOR_SPACE::JCS_RGB, 3),
            };
            cinfo.out_color_space = out_space;
            sys::jpeg_start_decompress(&mut cinfo);
            let (width, height) = (cinfo.output_width as usize, cinfo.output_height as usize);
            if cinfo.output_components as usize != components {
                resume_unwind(Box::new(LibjpegFailure(format!(
                    "decoder gives {} components per pixel, expected {components}",
                    cinfo.output_components
                ))));
            }
            let stride = width * components;
            // Not zero-filled: libjpeg writes every byte of every row before `set_len` below.
            let mut data: Vec<u8> = Vec::with_capacity(stride * height);
            let base = data.as_mut_ptr();
            let mut rows: Vec<*mut u8> = (0..height).map(|y| base.add(y * stride)).collect();
            while (cinfo.output_scanline as usize) < height {
                let done = cinfo.output_scanline as usize;
                let read = sys::jpeg_read_scanlines(
                    &mut cinfo,
                    rows.as_mut_ptr().add(done),
                    (height - done) as _,
                );
                if read == 0 {
                    // Only a suspending source returns 0; the memory source never suspends.
                    resume_unwind(Box::new(LibjpegFailure(
                        "decoder returned no scanline".to_string(),
                    )));
                }
            }
            data.set_len(stride * height);
            sys::jpeg_finish_decompress(&mut cinfo);
            Some(if components == 1 {
                Decoded::Gray {
                    width,
                    height,
                    data,
                }
            } else {
                Decoded::Rgb {
                    width,
                    height,
                    data,
                }
            })
        }
    }));
    // SAFETY: valid after `jpeg_create_decompress` in any state, also after an error; a no-op on
    // a struct whose creation failed (its memory manager is null).
    unsafe { sys::jpeg_destroy_decompress(&mut cinfo) };
    match result {
        Ok(Some(decoded)) => Ok(decoded),
        Ok(None) => Err(size_error.expect("size check failed")),
        Err(payload) => match payload.downcast::<LibjpegFailure>() {
            Ok(failure) => Err(decode_error(failure.0)),
            Err(other) => resume_unwind(other),
        },
    }
}
