/*
 * Mailward's own rules (MIT). Active content in documents, matched on the
 * decompressed objects Mailward extracts ("... > VBA source", RTF objects)
 * as well as on raw bytes, for documents the parsers could not open.
 */

rule VBA_Download_And_Execute
{
    meta:
        description = "VBA macro that downloads something and starts a program"
        category = "macro"
        severity = "high"
    strings:
        $get1 = "URLDownloadToFile" nocase
        $get2 = "MSXML2.XMLHTTP" nocase
        $get3 = "WinHttp.WinHttpRequest" nocase
        $get4 = "Microsoft.XMLHTTP" nocase
        $get5 = "ADODB.Stream" nocase
        $run1 = "WScript.Shell" nocase
        $run2 = "Shell.Application" nocase
        $run3 = "ShellExecute" nocase
        $run4 = /\bShell[ \t(]/ nocase
        $run5 = "Win32_Process" nocase
    condition:
        filepath endswith "> VBA source" and any of ($get*) and any of ($run*)
}

rule RTF_Auto_Updating_Object
{
    meta:
        description = "RTF with an embedded object that updates itself on open (\\objupdate)"
        category = "macro"
        severity = "high"
    strings:
        $rtf = "{\\rt"
        $obj = "\\object" nocase
        $upd = "\\objupdate" nocase
    condition:
        $rtf at 0 and $obj and $upd
}

rule RTF_Equation_Editor_Object
{
    meta:
        description = "RTF carrying an Equation Editor OLE object (CVE-2017-11882 family)"
        category = "macro"
        severity = "high"
    strings:
        $rtf = "{\\rt"
        $cls1 = "4571756174696f6e2e33" nocase      // "Equation.3" in the hex object data
        $cls2 = "4571756174696F6E2E33"
        $clsid = "0002ce02" nocase
    condition:
        $rtf at 0 and any of ($cls*)
}

rule PowerShell_Encoded_Command
{
    meta:
        description = "PowerShell started with a base64-encoded command, in an attachment or extracted object"
        category = "malware"
        severity = "high"
    strings:
        $ps = /powershell(\.exe)?["']?\s{1,10}(-[a-z]{1,20}\s{1,10}){0,6}-e(nc|ncodedcommand)?\s{1,10}["']?[A-Za-z0-9+\/=]{40}/ nocase ascii wide
    condition:
        $ps and (in_archive or filename != "")
}
