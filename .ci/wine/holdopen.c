/* Holds a file open with no sharing at all, as a program that wants a file to itself does (an
 * open mailbox, a database file), until a release file appears: every other open of it fails
 * with ERROR_SHARING_VIOLATION meanwhile. Appends a line first, so the file changes while it is
 * locked. Used by .ci/wine/service-test to lock a file under a running swrepl-master service.
 *
 *   holdopen.exe FILE RELEASE-FILE
 */
#include <windows.h>
#include <stdio.h>

int wmain(int argc, wchar_t **argv)
{
    if (argc != 3) {
        fwprintf(stderr, L"usage: holdopen FILE RELEASE-FILE\n");
        return 2;
    }
    HANDLE file = CreateFileW(argv[1], GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING,
                              FILE_ATTRIBUTE_NORMAL, NULL);
    if (file == INVALID_HANDLE_VALUE) {
        fwprintf(stderr, L"holdopen: cannot open %ls: error %lu\n", argv[1], GetLastError());
        return 1;
    }
    static const char line[] = "changed while locked\r\n";
    DWORD written = 0;
    SetFilePointer(file, 0, NULL, FILE_END);
    if (!WriteFile(file, line, sizeof line - 1, &written, NULL) || !FlushFileBuffers(file)) {
        fwprintf(stderr, L"holdopen: cannot write %ls: error %lu\n", argv[1], GetLastError());
        return 1;
    }
    fwprintf(stderr, L"holdopen: holding %ls\n", argv[1]);
    fflush(stderr); /* the script waits for this line; Wine's CRT buffers a redirected stderr */
    while (GetFileAttributesW(argv[2]) == INVALID_FILE_ATTRIBUTES)
        Sleep(100);
    CloseHandle(file);
    fwprintf(stderr, L"holdopen: released %ls\n", argv[1]);
    return 0;
}
