/* A shared-memory peer for tests/test_regions.py: plain shmget/shmat, shm_open and mmap,
 * no aioipc.
 *
 * Protocol (see peer.h): prints "ready", then one answer line per command. The peer holds
 * at most one mapping at a time; read and write work on it. At the end of input it
 * detaches or unmaps what it still holds and exits 0.
 *
 *   ftokget PATH PROJ           -> id SHMID key SIGNED     shmget(ftok(PATH, PROJ), 0, 0)
 *   get KEY                     -> id SHMID                an existing segment
 *   create KEY SIZE MODE        -> id SHMID                IPC_CREAT|IPC_EXCL, MODE octal
 *   attach SHMID FLAGS          -> attached SIZE           FLAGS: "-" or "ro" (SHM_RDONLY);
 *                                                          SIZE is the segment's shm_segsz
 *   detach                      -> detached
 *   stat SHMID                  -> stat SEGSZ NATTCH CPID LPID MODE(octal, low 9 bits)
 *   rm SHMID                    -> removed
 *   shmopen NAME                -> mapped SIZE             shm_open(NAME, O_RDWR) + mmap of
 *                                                          the whole object (fstat size)
 *   mmap PATH                   -> mapped SIZE             open(PATH, O_RDWR) + mmap of the
 *                                                          whole file (fstat size)
 *   unmap                       -> unmapped
 *   read OFF LEN                -> data HEX
 *   write OFF HEX               -> wrote LEN
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <unistd.h>

#include "peer.h"

enum kind { NONE, SYSV, MAPPED };

static enum kind held = NONE;
static unsigned char *base;
static size_t length;

static void release(void)
{
    if (held == SYSV && shmdt(base) < 0)
        fail("shmdt");
    if (held == MAPPED && munmap(base, length) < 0)
        fail("munmap");
    held = NONE;
    base = NULL;
    length = 0;
}

static void need_mapping(void)
{
    if (held == NONE)
        bad("nothing is attached or mapped", NULL);
}

static struct shmid_ds stat_of(int shmid)
{
    struct shmid_ds ds;
    if (shmctl(shmid, IPC_STAT, &ds) < 0)
        fail("shmctl IPC_STAT");
    return ds;
}

static void do_attach(char **rest)
{
    int shmid = (int)number(word(rest), 10);
    const char *flags = word(rest);
    int ro = strcmp(flags, "ro") == 0;
    if (!ro && strcmp(flags, "-") != 0)
        bad("attach flags", flags);
    release();
    struct shmid_ds ds = stat_of(shmid);
    void *p = shmat(shmid, NULL, ro ? SHM_RDONLY : 0);
    if (p == (void *)-1)
        fail("shmat");
    held = SYSV;
    base = p;
    length = ds.shm_segsz;
    reply("attached %zu", length);
}

/* mmap all of an open descriptor (a POSIX shm object or an ordinary file), then close it. */
static void map_fd(int fd, const char *what)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        fail("fstat");
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        fail(what);
    close(fd);
    held = MAPPED;
    base = p;
    length = (size_t)st.st_size;
    reply("mapped %zu", length);
}

static void do_read(char **rest)
{
    need_mapping();
    size_t off = (size_t)number(word(rest), 10);
    size_t len = (size_t)number(word(rest), 10);
    if (off > length || len > length - off)
        bad("read beyond the mapping", NULL);
    char *hex = tohex(base + off, len);
    reply("data %s", hex);
    free(hex);
}

static void do_write(char **rest)
{
    need_mapping();
    size_t off = (size_t)number(word(rest), 10);
    size_t len;
    unsigned char *data = unhex(word(rest), &len);
    if (off > length || len > length - off)
        bad("write beyond the mapping", NULL);
    memcpy(base + off, data, len);
    reply("wrote %zu", len);
    free(data);
}

static void command(char *line)
{
    char *rest;
    char *cmd = strtok_r(line, " ", &rest);
    if (cmd == NULL)
        bad("empty line", NULL);
    if (strcmp(cmd, "ftokget") == 0) {
        char *path = word(&rest);
        key_t key = ftok(path, (int)number(word(&rest), 10));
        if (key == -1)
            fail("ftok");
        int shmid = shmget(key, 0, 0);
        if (shmid < 0)
            fail("shmget");
        reply("id %d key %d", shmid, (int)key);
    } else if (strcmp(cmd, "get") == 0) {
        int shmid = shmget((key_t)number(word(&rest), 10), 0, 0);
        if (shmid < 0)
            fail("shmget");
        reply("id %d", shmid);
    } else if (strcmp(cmd, "create") == 0) {
        key_t key = (key_t)number(word(&rest), 10);
        size_t size = (size_t)number(word(&rest), 10);
        int shmid = shmget(key, size, IPC_CREAT | IPC_EXCL | (int)number(word(&rest), 8));
        if (shmid < 0)
            fail("shmget create");
        reply("id %d", shmid);
    } else if (strcmp(cmd, "attach") == 0) {
        do_attach(&rest);
    } else if (strcmp(cmd, "detach") == 0) {
        if (held != SYSV)
            bad("no segment attached", NULL);
        release();
        reply("detached");
    } else if (strcmp(cmd, "stat") == 0) {
        struct shmid_ds ds = stat_of((int)number(word(&rest), 10));
        reply("stat %zu %lu %d %d %o", (size_t)ds.shm_segsz, (unsigned long)ds.shm_nattch,
              (int)ds.shm_cpid, (int)ds.shm_lpid, (unsigned int)(ds.shm_perm.mode & 0777));
    } else if (strcmp(cmd, "rm") == 0) {
        if (shmctl((int)number(word(&rest), 10), IPC_RMID, NULL) < 0)
            fail("shmctl IPC_RMID");
        reply("removed");
    } else if (strcmp(cmd, "shmopen") == 0) {
        release();
        int fd = shm_open(word(&rest), O_RDWR, 0);
        if (fd < 0)
            fail("shm_open");
        map_fd(fd, "mmap shm");
    } else if (strcmp(cmd, "mmap") == 0) {
        release();
        int fd = open(word(&rest), O_RDWR | O_CLOEXEC);
        if (fd < 0)
            fail("open");
        map_fd(fd, "mmap file");
    } else if (strcmp(cmd, "unmap") == 0) {
        if (held != MAPPED)
            bad("nothing mapped", NULL);
        release();
        reply("unmapped");
    } else if (strcmp(cmd, "read") == 0) {
        do_read(&rest);
    } else if (strcmp(cmd, "write") == 0) {
        do_write(&rest);
    } else {
        bad("unknown command", cmd);
    }
}

int main(void)
{
    char *line = NULL;
    size_t cap = 0;
    reply("ready");
    while (next_line(&line, &cap))
        command(line);
    free(line);
    release();
    return 0;
}
