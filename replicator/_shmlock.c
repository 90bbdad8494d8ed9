/* Waiting for a byte lock of SQLite's wal-index (-shm) without the GIL.
 *
 * The fence (source.py) needs SQLite's WAL write lock while a flat-out writer takes it back
 * within microseconds of each commit. Retrying through SQLite's busy handler runs Python
 * for every attempt, and each attempt waited for the GIL (up to the 5 ms switch interval
 * while the copy loop and the shippers ran): taking the fence took 20-120 ms, during which
 * the writer added thousands of frames that the fence then had to backfill. Here the retry
 * loop is one C loop with the GIL released, polling every ~10 us.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static PyObject *wait_write_lock(PyObject *self, PyObject *args) {
    int fd;
    long long offset;
    double timeout_s;
    if (!PyArg_ParseTuple(args, "iLd", &fd, &offset, &timeout_s)) return NULL;
    struct flock fl = {0};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = offset;
    fl.l_len = 1;
    int rc, err = 0;
    Py_BEGIN_ALLOW_THREADS
    const double deadline = now_s() + timeout_s;
    const struct timespec pause = {0, 10000};
    for (;;) {
        rc = fcntl(fd, F_SETLK, &fl);
        if (rc == 0) break;
        err = errno;
        if ((err != EAGAIN && err != EACCES) || now_s() >= deadline) break;
        nanosleep(&pause, NULL);
    }
    Py_END_ALLOW_THREADS
    if (rc == 0) Py_RETURN_TRUE;
    if (err == EAGAIN || err == EACCES) Py_RETURN_FALSE;
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static PyMethodDef methods[] = {
    {"wait_write_lock", wait_write_lock, METH_VARARGS,
     "wait_write_lock(fd, offset, timeout_s) -> bool: a POSIX write lock on one byte, polled"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_shmlock", NULL, -1, methods};

PyMODINIT_FUNC PyInit__shmlock(void) { return PyModule_Create(&module); }
