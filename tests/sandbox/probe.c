/* Escape attempts that busybox cannot make: raw system calls with their errno.
 * Each subcommand prints one line, "ok ..." when the call succeeded and
 * "denied <errno name>" when the kernel refused it, and exits 0 either way so
 * the test reads the verdict from the output. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#ifndef SYS_fchmodat2
#define SYS_fchmodat2 452
#endif

static int verdict(long ret, const char *what) {
    if (ret < 0) printf("denied %s %s\n", what, strerrorname_np(errno));
    else printf("ok %s %ld\n", what, ret);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *cmd = argv[1];
    if (!strcmp(cmd, "setuid0")) {
        printf("uid %d euid %d\n", getuid(), geteuid());
        return verdict(setuid(0), "setuid");
    }
    if (!strcmp(cmd, "unshare-user")) return verdict(unshare(CLONE_NEWUSER), "unshare");
    if (!strcmp(cmd, "unshare-mount")) return verdict(unshare(CLONE_NEWNS), "unshare");
    if (!strcmp(cmd, "unshare-net")) return verdict(unshare(CLONE_NEWNET), "unshare");
    if (!strcmp(cmd, "chroot")) return verdict(chroot("/tmp"), "chroot");
    if (!strcmp(cmd, "mount-tmpfs"))
        return verdict(mount("none", "/tmp", "tmpfs", 0, ""), "mount");
    if (!strcmp(cmd, "remount-rw"))
        return verdict(mount(NULL, argv[2], NULL, MS_REMOUNT | MS_BIND, NULL), "mount");
    if (!strcmp(cmd, "mount-sysfs")) return verdict(mount("sysfs", "/tmp", "sysfs", 0, ""), "mount");
    if (!strcmp(cmd, "ptrace")) {
        pid_t pid = atoi(argv[2]);
        return verdict(ptrace(PTRACE_ATTACH, pid, 0, 0), "ptrace");
    }
    if (!strcmp(cmd, "kill")) return verdict(kill(atoi(argv[2]), SIGKILL), "kill");
    if (!strcmp(cmd, "connect")) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
        return verdict(connect(fd, (struct sockaddr *)&addr, sizeof addr), "connect");
    }
    if (!strcmp(cmd, "keyread")) {
        char buf[256];
        long ret = syscall(SYS_keyctl, 11 /* KEYCTL_READ */, atol(argv[2]), buf, sizeof buf);
        if (ret > 0) printf("ok keyread %.*s\n", (int)ret, buf);
        else verdict(ret < 0 ? -1 : 0, "keyread");
        return 0;
    }
    if (!strcmp(cmd, "membomb")) {
        /* Grab memory a MiB at a time and keep it; stop only when refused. */
        size_t total = 0;
        for (;;) {
            char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) break;
            memset(p, 1, 1 << 20);
            total += 1 << 20;
        }
        printf("refused after %zu MiB\n", total >> 20);
        fflush(stdout);
        pause();
        return 0;
    }
    if (!strcmp(cmd, "forkhold")) {
        /* Fork children that stay alive, and keep trying once refused. */
        long made = 0;
        int refused = 0;
        for (;;) {
            pid_t pid = fork();
            if (pid == 0) {
                pause();
                _exit(0);
            }
            if (pid > 0) {
                made++;
            } else if (!refused) {
                printf("fork refused after %ld: %s\n", made, strerrorname_np(errno));
                fflush(stdout);
                refused = 1;
            } else {
                usleep(10000);
            }
        }
    }
    if (!strcmp(cmd, "mknod"))
        return verdict(mknod("/tmp/disk", S_IFBLK | 0600, makedev(8, 0)), "mknod");
    if (!strcmp(cmd, "chmod") || !strcmp(cmd, "fchmod") || !strcmp(cmd, "fchmodat") ||
        !strcmp(cmd, "fchmodat2") || !strcmp(cmd, "chmod-i386")) {
        /* probe CALL OCTAL-MODE PATH: each variant is its own system call. */
        long mode = strtol(argv[2], NULL, 8);
        const char *path = argv[3];
        if (!strcmp(cmd, "chmod")) return verdict(syscall(SYS_chmod, path, mode), cmd);
        if (!strcmp(cmd, "fchmod"))
            return verdict(syscall(SYS_fchmod, open(path, O_RDONLY), mode), cmd);
        if (!strcmp(cmd, "fchmodat"))
            return verdict(syscall(SYS_fchmodat, AT_FDCWD, path, mode), cmd);
        if (!strcmp(cmd, "fchmodat2"))
            return verdict(syscall(SYS_fchmodat2, AT_FDCWD, path, mode, 0), cmd);
#if defined(__x86_64__)
        /* The i386 table through int 0x80 (chmod is 15 there); the path must
         * lie below 4 GiB, which static data of this non-PIE binary does. */
        static char low_path[4096];
        strncpy(low_path, path, sizeof low_path - 1);
        long ret;
        __asm__ volatile("int $0x80" : "=a"(ret) : "a"(15L), "b"(low_path), "c"(mode) : "memory");
        if (ret < 0) errno = -ret;
        return verdict(ret < 0 ? -1 : ret, cmd);
#else
        return 2;
#endif
    }
    if (!strcmp(cmd, "setxattr"))
        return verdict(setxattr(argv[2], "user.probe", "1", 1, 0), cmd);
    if (!strcmp(cmd, "lsetxattr"))
        return verdict(lsetxattr(argv[2], "user.probe", "1", 1, 0), cmd);
    if (!strcmp(cmd, "fsetxattr"))
        return verdict(fsetxattr(open(argv[2], O_RDONLY), "user.probe", "1", 1, 0), cmd);
    if (!strcmp(cmd, "sethostname")) return verdict(sethostname("evil", 4), "sethostname");
    if (!strcmp(cmd, "pivot_root"))
        return verdict(syscall(SYS_pivot_root, "/tmp", "/tmp"), "pivot_root");
    return 2;
}
