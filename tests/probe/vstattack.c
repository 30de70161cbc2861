/* vstattack: what a hostile root inside a guest tries (TESTING.md catalogue A1-A8). Built static
 * by the tests and run inside guests; each attempt prints one line, "name ok" or
 * "name errno=N" (or a record of what it saw), so the test decides what counts as a breach.
 *
 *   watch SECONDS          A1: watch /proc for every new process (until /vstwatch.stop
 *                          exists, or SECONDS pass); for each, record its
 *                          capabilities and seccomp mode, try to ptrace it and to steal its
 *                          descriptors with pidfd_getfd, and say whether it still runs a binary
 *                          that is not the guest's (a host helper before its exec).
 *   cgescape               A2: nested user namespace + cgroup namespace, then mount every
 *                          cgroup hierarchy and try to raise limits or reach the host's groups.
 *   rt                     SCHED_FIFO for ourselves (an RT task escapes the CFS quota).
 *   euid                   print the effective uid (a planted setuid copy, A3).
 *   swap DIR LINK SECONDS  A7: exchange a directory and a symlink, as fast as possible.
 *   immutable PATH         chattr +i through FS_IOC_SETFLAGS (CAP_LINUX_IMMUTABLE).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void report(const char *name, long result) {
    if (result < 0) printf("%s errno=%d\n", name, errno);
    else printf("%s ok\n", name);
    fflush(stdout);
}

static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    int saved = errno;
    close(fd);
    errno = saved;
    return n < 0 ? -1 : 0;
}

/* -- A1 ------------------------------------------------------------------------------------ */

static void status_field(const char *status, const char *key, char *out, size_t size) {
    const char *at = strstr(status, key);
    snprintf(out, size, "-");
    if (!at) return;
    at += strlen(key);
    while (*at == ' ' || *at == '\t') at++;
    size_t n = strcspn(at, "\n");
    if (n >= size) n = size - 1;
    memcpy(out, at, n);
    out[n] = 0;
    for (char *c = out; *c; c++) if (*c == ' ' || *c == '\t') *c = '_';
}

/* 1: the process runs a binary that is not in the guest (a host program before its exec);
 * 0: a binary of the guest; -1: not visible to us (non-dumpable: /proc/PID/exe refused). */
static int host_binary(pid_t pid) {
    char link[64], target[4096];
    struct stat via_proc, via_path;
    snprintf(link, sizeof link, "/proc/%d/exe", pid);
    if (stat(link, &via_proc) < 0) return -1;
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n < 0) return -1;
    target[n] = 0;
    if (stat(target, &via_path) < 0) return 1;
    return via_proc.st_dev != via_path.st_dev || via_proc.st_ino != via_path.st_ino;
}

static void examine(pid_t pid) {
    char path[64], status[8192] = "", name[64], capeff[32], capbnd[32], seccomp[8], uid[64];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
        ssize_t n = read(fd, status, sizeof status - 1);
        status[n > 0 ? n : 0] = 0;
        close(fd);
    }
    status_field(status, "Name:", name, sizeof name);
    status_field(status, "CapEff:", capeff, sizeof capeff);
    status_field(status, "CapBnd:", capbnd, sizeof capbnd);
    status_field(status, "Seccomp:", seccomp, sizeof seccomp);
    status_field(status, "Uid:", uid, sizeof uid);
    int host = host_binary(pid);
    /* Seize and stop it, so what we read of it next cannot change under us. */
    int traced = ptrace(PTRACE_SEIZE, pid, 0, 0) == 0;
    int trace_errno = traced ? 0 : errno;
    if (traced && ptrace(PTRACE_INTERRUPT, pid, 0, 0) == 0) {
        int st;
        waitpid(pid, &st, __WALL);
        host = host_binary(pid);
    }
    int stolen = 0, getfd_errno = 0;
    char stolen_what[512] = "";
    int pidfd = syscall(SYS_pidfd_open, pid, 0);
    if (pidfd >= 0) {
        for (int target = 0; target < 16; target++) {
            int got = syscall(SYS_pidfd_getfd, pidfd, target, 0);
            if (got < 0) {
                if (errno != EBADF) getfd_errno = errno;
                continue;
            }
            char fdlink[64], what[256];
            snprintf(fdlink, sizeof fdlink, "/proc/self/fd/%d", got);
            ssize_t n = readlink(fdlink, what, sizeof what - 1);
            what[n > 0 ? n : 0] = 0;
            size_t used = strlen(stolen_what);
            snprintf(stolen_what + used, sizeof stolen_what - used, "%s%d=%s",
                     stolen ? "," : "", target, what);
            stolen++;
            close(got);
        }
        close(pidfd);
    } else {
        getfd_errno = errno;
    }
    if (traced) ptrace(PTRACE_DETACH, pid, 0, 0);
    printf("seen pid=%d name=%s uid=%s capeff=%s capbnd=%s seccomp=%s host=%d ptrace=%d "
           "ptrace_errno=%d stolen=%d getfd_errno=%d fds=%s\n",
           pid, name, uid, capeff, capbnd, seccomp, host, traced, trace_errno, stolen,
           getfd_errno, stolen_what[0] ? stolen_what : "-");
    fflush(stdout);
}

static int watch(int seconds) {
    static unsigned char seen[1 << 22];
    pid_t self = getpid();
    time_t end = time(NULL) + seconds;
    /* What exists now is not what we are waiting for. */
    DIR *dir = opendir("/proc");
    struct dirent *entry;
    while (dir && (entry = readdir(dir))) {
        long pid = atol(entry->d_name);
        if (pid > 0 && pid < (1 << 22)) seen[pid] = 1;
    }
    if (dir) closedir(dir);
    printf("watching\n");
    fflush(stdout);
    while (time(NULL) < end && access("/vstwatch.stop", F_OK) != 0) {
        dir = opendir("/proc");
        if (!dir) return 1;
        while ((entry = readdir(dir))) {
            long pid = atol(entry->d_name);
            if (pid <= 0 || pid >= (1 << 22) || seen[pid] || pid == self) continue;
            seen[pid] = 1;
            examine((pid_t)pid);
        }
        closedir(dir);
    }
    printf("done\n");
    return 0;
}

/* -- A2 ------------------------------------------------------------------------------------ */

static int child_exit(void *arg) { (void)arg; _exit(0); }

static void try_clone_newuser(void) {
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_NEWUSER;
    args.exit_signal = SIGCHLD;
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid == 0) _exit(0);
    report("clone3-newuser", pid);
    if (pid > 0) waitpid(pid, NULL, 0);
    static char stack[1 << 16];
    pid = clone(child_exit, stack + sizeof stack, CLONE_NEWUSER | SIGCHLD, NULL);
    report("clone-newuser", pid);
    if (pid > 0) waitpid(pid, NULL, 0);
}

static const char *HIERARCHIES[] = {"memory", "pids", "cpu", "cpuacct", "freezer", "blkio",
                                    "cpuset", "devices", "name=systemd", "cgroup2", NULL};
/* A file that lifts a limit, or that is host-wide in the host's root group. */
static const char *LIFTS[][2] = {{"memory", "memory.limit_in_bytes"}, {"pids", "pids.max"},
                                 {"cpu", "cpu.cfs_quota_us"}, {"blkio", "blkio.weight"},
                                 {"cgroup2", "cgroup.subtree_control"}, {NULL, NULL}};

static int subdirs(const char *path) {
    DIR *dir = opendir(path);
    if (!dir) return -1;
    int count = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)))
        if (entry->d_type == DT_DIR && entry->d_name[0] != '.') count++;
    closedir(dir);
    return count;
}

static int cgescape(void) {
    try_clone_newuser();
    uid_t uid = getuid();
    gid_t gid = getgid();
    long r = unshare(CLONE_NEWUSER);
    report("unshare-newuser", r);
    if (r == 0) {
        char map[64];
        write_file("/proc/self/setgroups", "deny");
        snprintf(map, sizeof map, "0 %d 1\n", uid);
        report("uid-map", write_file("/proc/self/uid_map", map));
        snprintf(map, sizeof map, "0 %d 1\n", gid);
        report("gid-map", write_file("/proc/self/gid_map", map));
    }
    report("unshare-mnt-cgroup", unshare(CLONE_NEWNS | CLONE_NEWCGROUP));
    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
    mkdir("/tmp/vstcg", 0700);
    for (int i = 0; HIERARCHIES[i]; i++) {
        const char *h = HIERARCHIES[i];
        char dir[128], what[160];
        snprintf(dir, sizeof dir, "/tmp/vstcg/%d", i);
        mkdir(dir, 0700);
        int v2 = !strcmp(h, "cgroup2");
        snprintf(what, sizeof what, "mount-%s", h);
        long m = mount(v2 ? "none" : "cgroup", dir, v2 ? "cgroup2" : "cgroup", 0, v2 ? NULL : h);
        report(what, m);
        if (m < 0) continue;
        printf("subdirs-%s %d\n", h, subdirs(dir));
        char sub[200];
        snprintf(sub, sizeof sub, "%s/vstescape", dir);
        snprintf(what, sizeof what, "mkdir-%s", h);
        report(what, mkdir(sub, 0755));
        rmdir(sub);
        for (int j = 0; LIFTS[j][0]; j++) {
            if (strcmp(LIFTS[j][0], h)) continue;
            char file[256];
            snprintf(file, sizeof file, "%s/%s", dir, LIFTS[j][1]);
            snprintf(what, sizeof what, "write-%s", LIFTS[j][1]);
            int fd = open(file, O_WRONLY);
            report(what, fd);
            if (fd >= 0) close(fd);
        }
        umount2(dir, MNT_DETACH);
    }
    return 0;
}

/* -- the rest ------------------------------------------------------------------------------ */

static int rt(void) {
    struct sched_param param = {.sched_priority = 1};
    report("sched-fifo", sched_setscheduler(0, SCHED_FIFO, &param));
    report("sched-rr", sched_setscheduler(0, SCHED_RR, &param));
    return 0;
}

static int swap(const char *dir, const char *link, int seconds) {
    time_t end = time(NULL) + seconds;
    long swaps = 0;
    while (time(NULL) < end) {
        if (syscall(SYS_renameat2, AT_FDCWD, dir, AT_FDCWD, link, RENAME_EXCHANGE) == 0) swaps++;
    }
    printf("swapped %ld\n", swaps);
    return 0;
}

static int immutable(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) { report("open", -1); return 0; }
    int flags = 0;
    ioctl(fd, FS_IOC_GETFLAGS, &flags);
    flags |= FS_IMMUTABLE_FL;
    report("chattr-immutable", ioctl(fd, FS_IOC_SETFLAGS, &flags));
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    if (!strcmp(argv[1], "watch") && argc > 2) return watch(atoi(argv[2]));
    if (!strcmp(argv[1], "cgescape")) return cgescape();
    if (!strcmp(argv[1], "rt")) return rt();
    if (!strcmp(argv[1], "euid")) { printf("euid %d\n", geteuid()); return 0; }
    if (!strcmp(argv[1], "swap") && argc > 4) return swap(argv[2], argv[3], atoi(argv[4]));
    if (!strcmp(argv[1], "immutable") && argc > 2) return immutable(argv[2]);
    return 2;
}
