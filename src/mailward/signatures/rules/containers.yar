/*
 * Mailward's own rules (MIT). Shortcut files, OneNote notebooks and PDFs used
 * as droppers: the container types malware moved to after Office macros were blocked.
 */

rule LNK_Starts_Interpreter
{
    meta:
        description = "Windows shortcut whose target or arguments start a command interpreter"
        category = "malware"
        severity = "high"
    strings:
        $cmd = "cmd.exe" nocase ascii wide
        $ps = "powershell" nocase ascii wide
        $mshta = "mshta" nocase ascii wide
        $wscript = "wscript" nocase ascii wide
        $cscript = "cscript" nocase ascii wide
        $rundll = "rundll32" nocase ascii wide
        $regsvr = "regsvr32" nocase ascii wide
        $curl = "curl.exe" nocase ascii wide
    condition:
        uint32(0) == 0x0000004C and uint32(4) == 0x00021401 and any of them
}

rule OneNote_Embedded_Script_Or_Executable
{
    meta:
        description = "OneNote notebook with an embedded file that is a script, HTA or executable"
        category = "malware"
        severity = "high"
    strings:
        $embedded = { E7 16 E3 BD 65 26 11 45 A4 C4 8D 4D 0B 7A 9E AC }   // FileDataStoreObject header
        $hta = "<HTA:APPLICATION" nocase
        $wsh = "WScript.Shell" nocase
        $ps = "powershell" nocase
        $bat = "@echo off" nocase
        $mz = { 4D 5A 90 00 03 00 00 00 }
        $vbs = "CreateObject(" nocase
    condition:
        uint32be(0) == 0xE4525C7B and $embedded and any of ($hta, $wsh, $ps, $bat, $mz, $vbs)
}

rule PDF_Launch_Command
{
    meta:
        description = "PDF with a launch action that starts a program"
        category = "malware"
        severity = "high"
    strings:
        $launch = /\/S\s*\/Launch/
        $cmd = "cmd.exe" nocase
        $ps = "powershell" nocase
        $exe = /\.(exe|scr|bat|cmd|vbs|js|hta)\b/ nocase
    condition:
        uint32be(0) == 0x25504446 and $launch and any of ($cmd, $ps, $exe)
}
