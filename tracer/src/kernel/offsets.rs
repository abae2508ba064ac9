//! Fills [`KernelOffsets`] from the running kernel's BTF.

use anyhow::{Context as _, Result};
use tracer_common::{
    offsets::{KernelOffsets, MISSING},
    signal::EXE_NAME_LEN,
};

use super::btf::{KernelBtf, NamedKind};

/// Resolves every offset the kernel programs read. The fields that identify a task are
/// required; the rest (executable path, memory cgroup) degrade to "unknown" when a kernel
/// lacks them.
pub fn resolve(btf: &KernelBtf) -> Result<KernelOffsets> {
    let required = |s: &str, f: &str| {
        btf.field_offset(s, f)
            .with_context(|| format!("resolving `{s}.{f}` from kernel BTF"))
    };
    let optional = |s: &str, f: &str| {
        btf.field_offset(s, f).unwrap_or_else(|e| {
            log::debug!("{e:#}; the value that needs it is reported as unknown");
            MISSING
        })
    };
    // A kernel with BTF has these structs (conntrack's unless it is a module); MISSING makes
    // the casts fail to verify, and their programs fall back to variants without them.
    let struct_id =
        |name: &str| -> Result<u32> { Ok(btf.id_of(name, NamedKind::Struct)?.unwrap_or(MISSING)) };
    Ok(KernelOffsets {
        task_struct_pid: required("task_struct", "pid")?,
        task_struct_tgid: required("task_struct", "tgid")?,
        task_struct_comm: required("task_struct", "comm")?,
        task_struct_real_parent: required("task_struct", "real_parent")?,
        task_struct_group_leader: required("task_struct", "group_leader")?,
        task_struct_start_time: required("task_struct", "start_time")?,
        task_struct_thread_pid: required("task_struct", "thread_pid")?,
        task_struct_cgroups: optional("task_struct", "cgroups"),
        task_struct_mm: optional("task_struct", "mm"),
        pid_level: required("pid", "level")?,
        pid_numbers: required("pid", "numbers")?,
        upid_size: btf
            .struct_size("upid")
            .context("resolving `sizeof(struct upid)`")?,
        upid_nr: required("upid", "nr")?,
        css_set_dfl_cgrp: optional("css_set", "dfl_cgrp"),
        css_set_subsys: optional("css_set", "subsys"),
        cgroup_subsys_state_cgroup: optional("cgroup_subsys_state", "cgroup"),
        cgroup_kn: optional("cgroup", "kn"),
        kernfs_node_id: optional("kernfs_node", "id"),
        memory_cgrp_id: btf
            .enum_value("cgroup_subsys_id", "memory_cgrp_id")
            .map(|v| v as u32)
            .unwrap_or(MISSING),
        kernel_siginfo_si_code: required("kernel_siginfo", "si_code")?,
        kernel_siginfo_si_pid: optional("kernel_siginfo", "_sifields._kill._pid"),
        kernel_siginfo_si_uid: optional("kernel_siginfo", "_sifields._kill._uid"),
        mm_struct_exe_file: optional("mm_struct", "exe_file"),
        file_f_path_dentry: optional("file", "f_path.dentry"),
        dentry_d_name_name: optional("dentry", "d_name.name"),
        dentry_d_shortname: inline_name(btf),
        dentry_d_parent: optional("dentry", "d_parent"),
        file_f_path_mnt: optional("file", "f_path.mnt"),
        task_struct_fs: optional("task_struct", "fs"),
        fs_struct_root_mnt: optional("fs_struct", "root.mnt"),
        fs_struct_root_dentry: optional("fs_struct", "root.dentry"),
        sk_buff_nfct: optional("sk_buff", "_nfct"),
        sk_buff_dev: optional("sk_buff", "dev"),
        sk_buff_sk: optional("sk_buff", "sk"),
        sk_buff_head: optional("sk_buff", "head"),
        sk_buff_network_header: optional("sk_buff", "network_header"),
        sk_buff_tail: optional("sk_buff", "tail"),
        net_device_nd_net_net: optional("net_device", "nd_net.net"),
        sock_sk_common_skc_net_net: optional("sock", "__sk_common.skc_net.net"),
        nf_conn_tuplehash: optional("nf_conn", "tuplehash"),
        nf_conn_status: optional("nf_conn", "status"),
        nf_conn_ct_net_net: optional("nf_conn", "ct_net.net"),
        nf_conntrack_tuple_hash_tuple: optional("nf_conntrack_tuple_hash", "tuple"),
        net_ns_inum: optional("net", "ns.inum"),
        net_net_cookie: optional("net", "net_cookie"),
        net_ct_stat: optional("net", "ct.stat"),
        bpf_array_pptrs: optional("bpf_array", "pptrs"),
        // Network namespaces: only `tracer netns --watch` needs these; it checks them itself.
        task_struct_nsproxy: optional("task_struct", "nsproxy"),
        nsproxy_net_ns: optional("nsproxy", "net_ns"),
        net_ns_ns_type: optional("net", "ns.ns_type"),
        net_ns_ops: optional("net", "ns.ops"),
        net_ns_refcount: btf
            .field_offset("net", "ns.__ns_ref")
            .unwrap_or_else(|_| optional("net", "ns.count")),
        net_passive: optional("net", "passive"),
        net_list: optional("net", "list"),
        net_gen: optional("net", "gen"),
        work_struct_func: optional("work_struct", "func"),
        // Who sent a signal (tracers/signals/sender.rs): without these, si_codes are taken at
        // face value and the events say so.
        task_struct_stack: optional("task_struct", "stack"),
        task_struct_btf_id: struct_id("task_struct")?,
        sk_buff_btf_id: struct_id("sk_buff")?,
        nf_conn_btf_id: struct_id("nf_conn")?,
        net_btf_id: struct_id("net")?,
        ip_conntrack_stat_btf_id: struct_id("ip_conntrack_stat")?,
        task_struct_flags: optional("task_struct", "flags"),
        task_struct_ptrace: optional("task_struct", "ptrace"),
        task_struct_parent: optional("task_struct", "parent"),
        task_struct_thread_info_status: optional("task_struct", "thread_info.status"),
        pt_regs_syscall_nr: regs_field(&optional, SyscallRegister::Nr),
        pt_regs_syscall_ret: regs_field(&optional, SyscallRegister::Ret),
        pt_regs_arg0: regs_field(&optional, SyscallRegister::Arg0),
        pt_regs_arg0_compat: regs_field(&optional, SyscallRegister::Arg0Compat),
    })
}

/// `dentry.d_shortname` if it holds a whole captured component (`EXE_NAME_LEN` bytes): the
/// kernel program then reads short names with plain loads instead of a helper call each.
/// Kernels before 6.14 (`d_iname`) take the helper path.
fn inline_name(btf: &KernelBtf) -> u32 {
    match btf.struct_size("shortname_store") {
        Ok(size) if size as usize >= EXE_NAME_LEN => {
            btf.field_offset("dentry", "d_shortname").unwrap_or(MISSING)
        }
        _ => MISSING,
    }
}

/// A register of a syscall in the user `pt_regs`.
enum SyscallRegister {
    Nr,
    Ret,
    Arg0,
    Arg0Compat,
}

/// The `pt_regs` field holding `register` on this architecture; [`MISSING`] where the tracer
/// does not know the architecture's syscall convention (it then says so rather than guess).
fn regs_field(optional: &dyn Fn(&str, &str) -> u32, register: SyscallRegister) -> u32 {
    let field = match (std::env::consts::ARCH, register) {
        ("x86_64", SyscallRegister::Nr) => "orig_ax",
        ("x86_64", SyscallRegister::Ret) => "ax",
        ("x86_64", SyscallRegister::Arg0) => "di",
        ("x86_64", SyscallRegister::Arg0Compat) => "bx",
        _ => return MISSING,
    };
    optional("pt_regs", field)
}
