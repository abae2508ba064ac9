//! The sender descriptions (executable and ancestry) the kernel program sent, kept per CPU and
//! slot as the program keeps them (see `tracer_common::signal::SenderDescription`): a signal
//! record without one means "what this CPU's slot last sent", which is the record that last
//! carried one for that CPU and slot, because the ring buffer is read in order.

use std::{collections::HashMap, rc::Rc};

use anyhow::{ensure, Result};
use tracer_common::signal::{SenderDescription, SENDER_SLOTS};

use crate::text::kernel_str;

/// One ancestor as captured; its age is computed per signal. The strings are shared with
/// every signal that names them, not copied into each.
#[derive(Debug, PartialEq, Eq)]
pub struct Parent {
    pub pid: u32,
    pub comm: Rc<str>,
    pub start_ns: u64,
}

/// A sender's description, decoded once per sending.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Description {
    pub exe: Option<Rc<str>>,
    /// Parent first.
    pub ancestry: Vec<Parent>,
    pub ancestry_truncated: bool,
}

impl Description {
    pub fn decode(raw: &SenderDescription) -> Self {
        Self {
            exe: exe_path(raw).map(Rc::from),
            ancestry: raw.ancestry[..(raw.ancestry_len as usize).min(raw.ancestry.len())]
                .iter()
                .map(|a| Parent {
                    pid: a.pid,
                    comm: kernel_str(&a.comm).into(),
                    start_ns: a.start_ns,
                })
                .collect(),
            ancestry_truncated: raw.ancestry_truncated != 0,
        }
    }
}

/// What starts an executable's path inside a filesystem mounted elsewhere than the process's
/// `/` (where, the kernel program does not capture).
pub const OTHER_MOUNT: &str = "(another mount)";

/// Joins the executable path components the kernel captured (file name first).
fn exe_path(raw: &SenderDescription) -> Option<String> {
    let depth = (raw.exe_depth as usize).min(raw.exe.len());
    // A path inside another mount's filesystem must not read as one from `/`.
    let start = if raw.exe_other_mount != 0 {
        OTHER_MOUNT
    } else {
        ""
    };
    if depth == 0 {
        return (!start.is_empty()).then(|| start.to_string());
    }
    let mut parts: Vec<String> = raw.exe[..depth]
        .iter()
        .rev()
        .map(|c| kernel_str(c))
        .collect();
    if raw.exe_truncated != 0 {
        parts.insert(0, "...".into());
    }
    Some(format!("{start}/{}", parts.join("/")))
}

/// What each (CPU, slot) last sent. At most CPUs x [`SENDER_SLOTS`] entries.
#[derive(Default)]
pub struct Senders {
    slots: HashMap<(u32, u32), Rc<Description>>,
}

impl Senders {
    /// The new content of `slot` on `cpu`.
    pub fn store(
        &mut self,
        cpu: u32,
        slot: u32,
        raw: &SenderDescription,
    ) -> Result<Rc<Description>> {
        ensure!(
            slot < SENDER_SLOTS,
            "signal record names sender slot {slot}, past the kernel program's {SENDER_SLOTS}"
        );
        let description = Rc::new(Description::decode(raw));
        self.slots.insert((cpu, slot), description.clone());
        Ok(description)
    }

    /// What `slot` on `cpu` holds; `None` if it never sent anything (which the kernel program
    /// does not let happen).
    pub fn get(&self, cpu: u32, slot: u32) -> Option<Rc<Description>> {
        self.slots.get(&(cpu, slot)).cloned()
    }
}
