//! Kernel struct layout, resolved from the running kernel's BTF at start-up.
//!
//! Rust eBPF programs get no CO-RE field relocations, so the loader reads every offset the
//! programs need from `/sys/kernel/btf/vmlinux` and hands them over as one read-only global.
//! A field this kernel lacks is [`MISSING`]; programs skip what is missing.

/// Offset value for a field the running kernel does not have.
pub const MISSING: u32 = u32::MAX;

/// Byte offsets (and a few sizes and enum values) of the kernel fields the programs read.
/// Names are `struct_field`; a dotted BTF path such as `file.f_path.dentry` becomes
/// `file_f_path_dentry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_struct_pid: u32,
    pub task_struct_tgid: u32,
    pub task_struct_comm: u32,
    pub task_struct_real_parent: u32,
    pub task_struct_group_leader: u32,
    pub task_struct_start_time: u32,
    pub task_struct_thread_pid: u32,
    pub task_struct_cgroups: u32,
    pub task_struct_mm: u32,
    pub pid_level: u32,
    pub pid_numbers: u32,
    /// `sizeof(struct upid)`: stride of `pid.numbers[]`.
    pub upid_size: u32,
    pub upid_nr: u32,
    pub css_set_dfl_cgrp: u32,
    pub css_set_subsys: u32,
    pub cgroup_subsys_state_cgroup: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// `enum cgroup_subsys_id` value of the memory controller (index into `css_set.subsys`).
    pub memory_cgrp_id: u32,
    pub kernel_siginfo_si_code: u32,
    pub kernel_siginfo_si_pid: u32,
    pub kernel_siginfo_si_uid: u32,
    pub mm_struct_exe_file: u32,
    pub file_f_path_dentry: u32,
    pub dentry_d_name_name: u32,
    /// `dentry.d_shortname`: where a short name is kept inline (`d_name.name` then points to
    /// it); [`MISSING`] where the kernel has no such field or it is shorter than a captured
    /// component.
    pub dentry_d_shortname: u32,
    pub dentry_d_parent: u32,
    /// Whether the exe path's walk ended at the task's own root (tracer-ebpf/src/signals.rs):
    /// the file's mount (`file.f_path.mnt`) and the task's root (`task_struct.fs`,
    /// `fs_struct.root`).
    pub file_f_path_mnt: u32,
    pub task_struct_fs: u32,
    pub fs_struct_root_mnt: u32,
    pub fs_struct_root_dentry: u32,
    pub sk_buff_nfct: u32,
    pub sk_buff_dev: u32,
    pub sk_buff_sk: u32,
    pub sk_buff_head: u32,
    pub sk_buff_network_header: u32,
    /// `sk_buff.tail`: the end of the linear data, as an offset from `head` (64-bit kernels).
    pub sk_buff_tail: u32,
    pub net_device_nd_net_net: u32,
    pub sock_sk_common_skc_net_net: u32,
    pub nf_conn_tuplehash: u32,
    pub nf_conn_status: u32,
    pub nf_conn_ct_net_net: u32,
    pub nf_conntrack_tuple_hash_tuple: u32,
    pub net_ns_inum: u32,
    pub net_net_cookie: u32,
    pub net_ct_stat: u32,
    /// Where a per-CPU array map keeps its per-CPU pointers: used to learn this CPU's
    /// per-CPU offset (see tracer-ebpf/src/percpu.rs).
    pub bpf_array_pptrs: u32,
    pub task_struct_nsproxy: u32,
    pub nsproxy_net_ns: u32,
    /// `net.ns.ns_type` (6.18+): tells a `struct net` from another object of the same size.
    pub net_ns_ns_type: u32,
    /// `net.ns.ops`: the same in every `struct net` (tells one apart on kernels before 6.18).
    pub net_ns_ops: u32,
    /// `net.ns.__ns_ref` (`ns.count` before 6.18): 0 once teardown is queued.
    pub net_ns_refcount: u32,
    /// `net.passive`: references that keep the memory (not the namespace) alive.
    pub net_passive: u32,
    pub net_list: u32,
    pub net_gen: u32,
    pub work_struct_func: u32,
    pub task_struct_stack: u32,
    pub task_struct_flags: u32,
    /// `task_struct.ptrace` (non-zero while traced) and `parent` (the tracer then).
    pub task_struct_ptrace: u32,
    pub task_struct_parent: u32,
    /// `task_struct.thread_info.status` (x86: `TS_COMPAT` marks a 32-bit syscall).
    pub task_struct_thread_info_status: u32,
    /// The user registers' syscall number (x86: `pt_regs.orig_ax`); [`MISSING`] on an
    /// architecture the loader does not know.
    pub pt_regs_syscall_nr: u32,
    /// The syscall's return value register (x86: `pt_regs.ax`, `-ENOSYS` while it runs).
    pub pt_regs_syscall_ret: u32,
    /// The first syscall argument, 64-bit ABI (x86: `pt_regs.di`).
    pub pt_regs_arg0: u32,
    /// The first syscall argument, 32-bit ABI (x86: `pt_regs.bx`).
    pub pt_regs_arg0_compat: u32,
    /// The id of `struct task_struct` in the kernel's BTF, for [`RDONLY_CAST_IMM`].
    pub task_struct_btf_id: u32,
    /// The id of `struct sk_buff` in the kernel's BTF, for [`RDONLY_CAST_IMM`].
    pub sk_buff_btf_id: u32,
    /// The ids of `struct nf_conn`, `struct net` and `struct ip_conntrack_stat` in the
    /// kernel's BTF, for [`RDONLY_CAST_IMM`] ([`MISSING`] where conntrack is a module: its
    /// types are in the module's BTF, which the cast does not take).
    pub nf_conn_btf_id: u32,
    pub net_btf_id: u32,
    pub ip_conntrack_stat_btf_id: u32,
}

/// The immediate of the `bpf_rdonly_cast` kfunc calls in the kernel programs, which the
/// loader replaces with the kfunc's id in this kernel's BTF (the programs cannot name a
/// kfunc: aya has no kfunc relocations). A task read through the untrusted pointer the cast
/// returns is verified without looking up, at every pointer it follows, whether the kernel
/// marked that field trusted: each such lookup scans every type of the kernel's BTF, and they
/// were three quarters of verifying `signal_generate` on Linux 6.18 (perf).
pub const RDONLY_CAST_IMM: u32 = 0x6b66_0001;

impl KernelOffsets {
    /// Every field missing: what the programs see if the loader never set the global.
    pub const fn missing() -> Self {
        Self {
            task_struct_pid: MISSING,
            task_struct_tgid: MISSING,
            task_struct_comm: MISSING,
            task_struct_real_parent: MISSING,
            task_struct_group_leader: MISSING,
            task_struct_start_time: MISSING,
            task_struct_thread_pid: MISSING,
            task_struct_cgroups: MISSING,
            task_struct_mm: MISSING,
            pid_level: MISSING,
            pid_numbers: MISSING,
            upid_size: MISSING,
            upid_nr: MISSING,
            css_set_dfl_cgrp: MISSING,
            css_set_subsys: MISSING,
            cgroup_subsys_state_cgroup: MISSING,
            cgroup_kn: MISSING,
            kernfs_node_id: MISSING,
            memory_cgrp_id: MISSING,
            kernel_siginfo_si_code: MISSING,
            kernel_siginfo_si_pid: MISSING,
            kernel_siginfo_si_uid: MISSING,
            mm_struct_exe_file: MISSING,
            file_f_path_dentry: MISSING,
            dentry_d_name_name: MISSING,
            dentry_d_shortname: MISSING,
            dentry_d_parent: MISSING,
            file_f_path_mnt: MISSING,
            task_struct_fs: MISSING,
            fs_struct_root_mnt: MISSING,
            fs_struct_root_dentry: MISSING,
            sk_buff_nfct: MISSING,
            sk_buff_dev: MISSING,
            sk_buff_sk: MISSING,
            sk_buff_head: MISSING,
            sk_buff_network_header: MISSING,
            sk_buff_tail: MISSING,
            net_device_nd_net_net: MISSING,
            sock_sk_common_skc_net_net: MISSING,
            nf_conn_tuplehash: MISSING,
            nf_conn_status: MISSING,
            nf_conn_ct_net_net: MISSING,
            nf_conntrack_tuple_hash_tuple: MISSING,
            net_ns_inum: MISSING,
            net_net_cookie: MISSING,
            net_ct_stat: MISSING,
            bpf_array_pptrs: MISSING,
            task_struct_nsproxy: MISSING,
            nsproxy_net_ns: MISSING,
            net_ns_ns_type: MISSING,
            net_ns_ops: MISSING,
            net_ns_refcount: MISSING,
            net_passive: MISSING,
            net_list: MISSING,
            net_gen: MISSING,
            work_struct_func: MISSING,
            task_struct_stack: MISSING,
            task_struct_flags: MISSING,
            task_struct_ptrace: MISSING,
            task_struct_parent: MISSING,
            task_struct_thread_info_status: MISSING,
            pt_regs_syscall_nr: MISSING,
            pt_regs_syscall_ret: MISSING,
            pt_regs_arg0: MISSING,
            pt_regs_arg0_compat: MISSING,
            task_struct_btf_id: MISSING,
            sk_buff_btf_id: MISSING,
            nf_conn_btf_id: MISSING,
            net_btf_id: MISSING,
            ip_conntrack_stat_btf_id: MISSING,
        }
    }
}
